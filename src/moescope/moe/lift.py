"""Lift a transformers MoE block into the equivalent moescope layer (weights copied).

``from_hf(block)`` recognises the block by its class and rebuilds it from moescope parts:

=================================  =========================================================
transformers block                 moescope layer
=================================  =========================================================
``MixtralSparseMoeBlock``          TopKRouter(normalize_topk=True) + SwiGLU Experts
``Qwen2MoeSparseMoeBlock``         TopKRouter(norm_topk_prob) + sigmoid-gated SharedExpert
``Qwen3MoeSparseMoeBlock``         TopKRouter(norm_topk_prob)
``OlmoeSparseMoeBlock``            TopKRouter(norm_topk_prob)
``DeepseekV3MoE``                  DeepSeekV3Router (bias, groups, scaling) + SharedExpert
``Llama4TextMoe``                  Llama4Router (input weighting) + SharedExpert
``GptOssMLP``                      GptOssRouter + Experts(gate="gpt_oss", bias=True)
``SwitchTransformersSparseMLP``    SwitchRouter(fixed capacity per sequence) + ReLU MLPs
=================================  =========================================================

Weights are copied (``clone``), never shared, keep each tensor's dtype (a bfloat16 block gives a
bfloat16 layer), and are converted to moescope's layout
(E, 2I, H) / (E, H, I) where the reference stores them transposed (Llama 4, GPT-OSS) or
interleaves gate and up columns (GPT-OSS). The result equals the block's forward and its
gradients to float32 rounding; see ``tests/moe/test_from_hf.py``. Not carried over: the dropout
inside Switch Transformers' experts (``dropout_rate``, active in training mode only), so a lifted
Switch layer trains without it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moescope.moe.experts import Experts, SharedExpert
from moescope.moe.layer import MoELayer
from moescope.moe.routers import DeepSeekV3Router, GptOssRouter, Llama4Router, SwitchRouter, TopKRouter

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


def _mixtral(block: nn.Module) -> MoELayer:
    return _topk_block(block, normalize=True)


def _qwen_olmoe(block: nn.Module) -> MoELayer:
    return _topk_block(block, normalize=bool(block.gate.norm_topk_prob))


def _qwen2(block: nn.Module) -> MoELayer:
    shared = _shared(block.shared_expert, block.shared_expert_gate)
    return _topk_block(block, normalize=bool(block.gate.norm_topk_prob), shared=shared)


def _deepseek_v3(block: nn.Module) -> MoELayer:
    gate = block.gate
    experts = _stacked_experts(block.experts)
    router = DeepSeekV3Router(experts.hidden, experts.num_experts, gate.top_k, n_group=gate.num_group,
                              topk_group=gate.topk_group, routed_scaling_factor=float(gate.routed_scaling_factor),
                              normalize_topk=bool(gate.norm_topk_prob))
    _copy(router.weight, gate.weight)
    _copy(router.selection_bias, gate.e_score_correction_bias)
    return MoELayer(router=router, experts=experts, shared=_shared(block.shared_experts))


def _llama4(block: nn.Module) -> MoELayer:
    src = block.experts
    num_experts, hidden, two_i = src.gate_up_proj.shape
    experts = Experts(num_experts, hidden, two_i // 2, activation=_activation(src.act_fn))
    _copy(experts.gate_up_proj, src.gate_up_proj.transpose(1, 2))      # (E, H, 2I) -> (E, 2I, H)
    _copy(experts.down_proj, src.down_proj.transpose(1, 2))            # (E, I, H) -> (E, H, I)
    router = Llama4Router(hidden, num_experts, block.router.top_k)
    _copy(router.weight, block.router.weight)
    return MoELayer(router=router, experts=experts, shared=_shared(block.shared_expert))


def _gpt_oss(block: nn.Module) -> MoELayer:
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


def _switch(block: nn.Module) -> MoELayer:
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


CONVERTERS = {
    "MixtralSparseMoeBlock": _mixtral,
    "Qwen2MoeSparseMoeBlock": _qwen2,
    "Qwen3MoeSparseMoeBlock": _qwen_olmoe,
    "OlmoeSparseMoeBlock": _qwen_olmoe,
    "DeepseekV3MoE": _deepseek_v3,
    "Llama4TextMoe": _llama4,
    "GptOssMLP": _gpt_oss,
    "SwitchTransformersSparseMLP": _switch,
}


def from_hf(block: nn.Module) -> MoELayer:
    """The moescope layer equivalent to a transformers MoE block, holding copies of its weights.

    Raises:
        TypeError: for a block of a family not in :data:`CONVERTERS` (the message lists them).
    """
    name = type(block).__name__
    if name not in CONVERTERS:
        raise TypeError(f"from_hf does not know {name}; supported blocks: {', '.join(CONVERTERS)}")
    layer = CONVERTERS[name](block)
    ref = next(block.parameters(), None)
    if ref is not None:
        layer = layer.to(device=ref.device)
    return layer.train(block.training)
