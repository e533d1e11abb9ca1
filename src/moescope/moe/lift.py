"""Lift a transformers MoE block into the equivalent moescope layer (weights copied).

``from_hf(block)`` looks the block's class name up among the registered converters and rebuilds
the block from moescope parts. The converters are the public ``lift_*`` functions below; *which*
block class each one lifts is a fact of the family, kept in its file in
:mod:`moescope.models.families` (``Family.blocks`` + ``Family.from_hf``), which registers it here
with :func:`register_converter`. The converters and what each gives:

=========================  ==================================================================
converter                  moescope layer
=========================  ==================================================================
:func:`lift_mixtral`       TopKRouter(normalize_topk=True) + SwiGLU Experts
:func:`lift_qwen2_moe`     TopKRouter(norm_topk_prob) + sigmoid-gated SharedExpert
:func:`lift_topk`          TopKRouter(norm_topk_prob) (Qwen3-MoE, OLMoE)
:func:`lift_deepseek_v3`   DeepSeekV3Router (bias, groups, scaling) + SharedExpert
:func:`lift_llama4`        Llama4Router (input weighting) + SharedExpert
:func:`lift_gpt_oss`       GptOssRouter + Experts(gate="gpt_oss", bias=True)
:func:`lift_switch`        SwitchRouter(fixed capacity per sequence) + ReLU MLPs
=========================  ==================================================================

**The plugin hook.** ``moe`` sits below ``models`` and may not import it at import time, so the
block-class -> converter table is filled from the other side: importing
:mod:`moescope.models.families` registers every family's converter. :func:`from_hf` imports that
package (with :mod:`importlib`, at call time) before it looks a block up, the way transformers'
auto mappings import a model's module only when it is first asked for. A converter for a block
moescope has no family file for can be added with :func:`register_converter`.

Weights are copied (``clone``), never shared, keep each tensor's dtype (a bfloat16 block gives a
bfloat16 layer), and are converted to moescope's layout
(E, 2I, H) / (E, H, I) where the reference stores them transposed (Llama 4, GPT-OSS) or
interleaves gate and up columns (GPT-OSS). The result equals the block's forward and its
gradients to float32 rounding; see ``tests/moe/test_from_hf.py``. Not carried over: the dropout
inside Switch Transformers' experts (``dropout_rate``, active in training mode only), so a lifted
Switch layer trains without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from moescope.moe.experts import Experts, SharedExpert
from moescope.moe.layer import MoELayer
from moescope.moe.routers import DeepSeekV3Router, GptOssRouter, Llama4Router, SwitchRouter, TopKRouter

__all__ = ["converters", "from_hf", "lift_deepseek_v3", "lift_gpt_oss", "lift_llama4", "lift_mixtral",
           "lift_qwen2_moe", "lift_switch", "lift_topk", "register_converter"]

_ACTIVATION_BY_CLASS = {"SiLU": "silu", "SiLUActivation": "silu", "GELUActivation": "gelu", "GELU": "gelu",
                        "ReLU": "relu", "NewGELUActivation": "gelu_tanh", "GELUTanh": "gelu_tanh",
                        "PytorchGELUTanh": "gelu_tanh", "GELUPytorchTanh": "gelu_tanh"}


def _activation(module: nn.Module) -> str:
    name = type(module).__name__
    if name not in _ACTIVATION_BY_CLASS:
        raise ValueError(f"unsupported expert activation {name}; supported: {', '.join(sorted(_ACTIVATION_BY_CLASS))}")
    return _ACTIVATION_BY_CLASS[name]


def _copy(dst: Tensor, src: Tensor) -> None:
    """dst becomes a copy of src, in src's dtype (a bfloat16 checkpoint stays bfloat16, a float64
    block float64: the layer computes in the precision of the block it replaces)."""
    if dst.shape != src.shape:
        raise ValueError(f"shape mismatch while copying weights: {tuple(src.shape)} -> {tuple(dst.shape)}")
    dst.data = src.detach().to(device=dst.device, memory_format=torch.contiguous_format, copy=True)


def _stacked_experts(src: nn.Module, activation: str | None = None) -> Experts:
    """transformers' stacked SwiGLU experts: gate_up_proj (E, 2I, H), down_proj (E, H, I)."""
    num_experts, two_i, hidden = src.gate_up_proj.shape
    experts = Experts(num_experts, hidden, two_i // 2, activation=activation or _activation(src.act_fn))
    _copy(experts.gate_up_proj, src.gate_up_proj)
    _copy(experts.down_proj, src.down_proj)
    return experts


def _shared(mlp: nn.Module, gate: nn.Module | None = None, activation: str | None = None) -> SharedExpert:
    """A Hugging Face MLP (gate_proj, up_proj, down_proj) as a SharedExpert."""
    inter, hidden = mlp.gate_proj.weight.shape
    act = activation or _activation(getattr(mlp, "act_fn", None) or mlp.activation_fn)
    shared = SharedExpert(hidden, inter, activation=act, gate="sigmoid" if gate is not None else None)
    for name in ("gate_proj", "up_proj", "down_proj"):
        _copy(getattr(shared.ffn, name).weight, getattr(mlp, name).weight)
    if gate is not None:
        _copy(shared.gate.weight, gate.weight)
    return shared


def _topk_block(block: nn.Module, normalize: bool, shared: SharedExpert | None = None) -> MoELayer:
    gate = block.gate
    experts = _stacked_experts(block.experts)
    router = TopKRouter(experts.hidden, experts.num_experts, gate.top_k, normalize_topk=normalize,
                        jitter=float(getattr(block, "jitter_noise", 0.0) or 0.0))
    _copy(router.weight, gate.weight)
    return MoELayer(router=router, experts=experts, shared=shared)


def lift_mixtral(block: nn.Module) -> MoELayer:
    """Mixtral: softmax top-k, the k weights renormalised."""
    return _topk_block(block, normalize=True)


def lift_topk(block: nn.Module) -> MoELayer:
    """A softmax top-k block whose gate says ``norm_topk_prob`` (Qwen3-MoE, OLMoE)."""
    return _topk_block(block, normalize=bool(block.gate.norm_topk_prob))


def lift_qwen2_moe(block: nn.Module) -> MoELayer:
    """Qwen2-MoE: top-k plus a shared expert scaled by sigmoid(shared_expert_gate(x))."""
    shared = _shared(block.shared_expert, block.shared_expert_gate)
    return _topk_block(block, normalize=bool(block.gate.norm_topk_prob), shared=shared)


def lift_deepseek_v3(block: nn.Module) -> MoELayer:
    """DeepSeek-V3: sigmoid scores, selection bias, group limit, routed scaling, shared experts."""
    gate = block.gate
    experts = _stacked_experts(block.experts)
    router = DeepSeekV3Router(experts.hidden, experts.num_experts, gate.top_k, n_group=gate.num_group,
                              topk_group=gate.topk_group, routed_scaling_factor=float(gate.routed_scaling_factor),
                              normalize_topk=bool(gate.norm_topk_prob))
    _copy(router.weight, gate.weight)
    _copy(router.selection_bias, gate.e_score_correction_bias)
    return MoELayer(router=router, experts=experts, shared=_shared(block.shared_experts))


def lift_llama4(block: nn.Module) -> MoELayer:
    """Llama 4: sigmoid top-k weighting each expert's *input*, plus a shared expert; (E, H, 2I) transposed."""
    src = block.experts
    num_experts, hidden, two_i = src.gate_up_proj.shape
    experts = Experts(num_experts, hidden, two_i // 2, activation=_activation(src.act_fn))
    _copy(experts.gate_up_proj, src.gate_up_proj.transpose(1, 2))      # (E, H, 2I) -> (E, 2I, H)
    _copy(experts.down_proj, src.down_proj.transpose(1, 2))            # (E, I, H) -> (E, H, I)
    router = Llama4Router(hidden, num_experts, block.router.top_k)
    _copy(router.weight, block.router.weight)
    return MoELayer(router=router, experts=experts, shared=_shared(block.shared_expert))


def lift_gpt_oss(block: nn.Module) -> MoELayer:
    """GPT-OSS: biased router, softmax over the chosen k, clamped SwiGLU experts with biases."""
    src = block.experts
    num_experts, hidden, two_i = src.gate_up_proj.shape
    experts = Experts(num_experts, hidden, two_i // 2, gate="gpt_oss", bias=True,
                      limit=float(src.limit), alpha=float(src.alpha))
    # GPT-OSS interleaves gate (even columns) and up (odd columns) and stores (E, H, 2I).
    gate_up = torch.cat([src.gate_up_proj[..., ::2], src.gate_up_proj[..., 1::2]], dim=-1)
    _copy(experts.gate_up_proj, gate_up.transpose(1, 2))
    _copy(experts.gate_up_bias, torch.cat([src.gate_up_proj_bias[..., ::2], src.gate_up_proj_bias[..., 1::2]], -1))
    _copy(experts.down_proj, src.down_proj.transpose(1, 2))
    _copy(experts.down_bias, src.down_proj_bias)
    router = GptOssRouter(hidden, num_experts, block.router.top_k)
    _copy(router.weight, block.router.weight)
    _copy(router.bias, block.router.bias)
    return MoELayer(router=router, experts=experts)


def lift_switch(block: nn.Module) -> MoELayer:
    """Switch Transformers: top-1 with a fixed capacity per sequence, ReLU MLP experts."""
    src = block.router
    first = block.experts["expert_0"]
    inter, hidden = first.wi.weight.shape
    num_experts = src.num_experts
    experts = Experts(num_experts, hidden, inter, gate="none", activation=_activation(first.act))
    _copy(experts.gate_up_proj, torch.stack([block.experts[f"expert_{e}"].wi.weight for e in range(num_experts)]))
    _copy(experts.down_proj, torch.stack([block.experts[f"expert_{e}"].wo.weight for e in range(num_experts)]))
    router = SwitchRouter(hidden, num_experts, expert_capacity=int(src.expert_capacity), capacity_scope="sequence",
                          bias=src.classifier.bias is not None, jitter=float(src.jitter_noise))
    _copy(router.weight, src.classifier.weight)
    if router.bias is not None:
        _copy(router.bias, src.classifier.bias)
    return MoELayer(router=router, experts=experts)


Converter = Callable[[nn.Module], MoELayer]

#: block class name -> converter; filled by :mod:`moescope.models.families` (see the module docstring).
_CONVERTERS: dict[str, Converter] = {}
_FAMILIES = "moescope.models.families"


def register_converter(block_class_name: str, fn: Converter) -> None:
    """Make :func:`from_hf` lift blocks of class ``block_class_name`` with ``fn``.

    Raises:
        ValueError: when another converter is already registered for that class.
    """
    known = _CONVERTERS.get(block_class_name)
    if known is not None and known is not fn:
        raise ValueError(f"a converter for {block_class_name} is already registered ({known.__name__}); "
                         f"refusing {getattr(fn, '__name__', fn)!r}")
    _CONVERTERS[block_class_name] = fn


def converters() -> dict[str, Converter]:
    """Every registered block class name -> its converter (the family registry loaded first)."""
    importlib.import_module(_FAMILIES)  # the plugin hook: registering is a side effect of the import
    return dict(_CONVERTERS)


def from_hf(block: nn.Module) -> MoELayer:
    """The moescope layer equivalent to a transformers MoE block, holding copies of its weights.

    Raises:
        TypeError: for a block whose class has no registered converter (the message lists
            the classes that have one).
    """
    table = converters()
    name = type(block).__name__
    if name not in table:
        raise TypeError(f"from_hf does not know {name}; supported blocks: {', '.join(sorted(table))}")
    layer = table[name](block)
    ref = next(block.parameters(), None)
    if ref is not None:
        layer = layer.to(device=ref.device)
    return layer.train(block.training)
