"""Find the MoE layers of a live model and describe each one as a :class:`MoELayerView`.

:func:`find_moe_layers` walks ``model.named_modules()`` and recognises an MoE block by its
class name (:data:`ADAPTERS`: class name -> one small function per family; moescope's own
layers by type). Each adapter reads the block's router and experts *where the block keeps
them* and converts every layout to moescope's orientation (rows index the output):
gate (I, H), up (I, H), down (H, I).

=======================================  ==================================================
transformers 5.x block                   expert storage -> conversion
=======================================  ==================================================
Mixtral, Qwen2/3-MoE, OLMoE, PhiMoE,     stacked ``gate_up_proj`` (E, 2I, H): gate rows
GraniteMoE(-shared), DeepSeek-V2/V3      [0, I), up rows [I, 2I); ``down_proj`` (E, H, I)
Llama 4 (``Llama4TextMoe``)              ``gate_up_proj`` (E, H, 2I), ``down_proj`` (E, I, H):
                                         transposed
GPT-OSS (``GptOssMLP``)                  (E, H, 2I) with gate / up *interleaved* in the
                                         columns (even = gate, odd = up), transposed
Switch Transformers                      a ModuleDict ``expert_{e}`` of ``wi`` (I, H),
                                         ``wo`` (H, I) Linear layers, no gate
=======================================  ==================================================

Every stacked layout is checked against the shapes it must have, so a transformers version
that changes a layout fails loudly instead of silently transposing an expert. The tensors a
view returns are detached *views* of the live parameters (no copy): treat them as read-only.

What a view does not carry (candidates for additive fields): GPT-OSS's expert biases and
clamped activation, Qwen2-MoE's sigmoid shared-expert gate, Llama 4's weighting of the
expert *input* instead of its output, and each family's activation. Recording does not need
them; reproducing a block's output from the view does (``tests/models`` reads them from the
module). DeepSeek's ``n_shared_experts`` shared experts are one fused MLP in both the
reference code and transformers, and are described as one shared expert of that width.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from moescope.models.view import ExpertWeights, MoELayerView
from moescope.moe.experts import DenseFFN, Experts, SharedExpert
from moescope.moe.layer import MoELayer
from moescope.moe.soft import SoftMoELayer

Parts = dict  # the keyword arguments of MoELayerView an adapter fills (all but name, index, module)


# -- expert layouts -----------------------------------------------------------------------------
def _stacked(gate_up: Tensor, down: Tensor, *, transposed: bool = False, interleaved: bool = False,
             where: str = "") -> Callable[[int], ExpertWeights]:
    """Expert e of stacked weights, in moescope orientation.

    ``gate_up`` (E, 2I, H) and ``down`` (E, H, I); with ``transposed`` (E, H, 2I) and (E, I, H).
    ``interleaved``: gate and up alternate along the 2I axis (GPT-OSS) instead of [gate; up].
    """
    gate_up, down = gate_up.detach(), down.detach()
    if gate_up.dim() != 3 or down.dim() != 3 or gate_up.shape[0] != down.shape[0]:
        raise ValueError(f"{where}: expected stacked expert weights (E, ., .); got gate_up "
                         f"{tuple(gate_up.shape)} and down {tuple(down.shape)}")
    num_experts = gate_up.shape[0]
    hidden, inter = (down.shape[2], down.shape[1]) if transposed else (down.shape[1], down.shape[2])
    want = (num_experts, hidden, 2 * inter) if transposed else (num_experts, 2 * inter, hidden)
    if tuple(gate_up.shape) != want:
        raise ValueError(f"{where}: gate_up_proj has shape {tuple(gate_up.shape)} but down_proj "
                         f"{tuple(down.shape)} implies {want} (transposed={transposed}); the layout changed?")

    def expert(e: int) -> ExpertWeights:
        _check_expert(e, num_experts)
        gu = gate_up[e].t() if transposed else gate_up[e]                     # (2I, H)
        gate, up = (gu[0::2], gu[1::2]) if interleaved else (gu[:inter], gu[inter:])
        return ExpertWeights(gate=gate, up=up, down=down[e].t() if transposed else down[e])  # down (H, I)

    return expert


def _check_expert(e: int, num_experts: int) -> None:
    if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e < num_experts:
        raise ValueError(f"expert index must be an int in [0, {num_experts}); got e={e!r}")


def _mlp(mlp: nn.Module, gate: str | None = "gate_proj", up: str = "up_proj",
         down: str = "down_proj") -> Callable[[], ExpertWeights]:
    """A gated MLP of three Linear layers (Hugging Face naming) as a shared expert."""
    def shared() -> ExpertWeights:
        return ExpertWeights(gate=None if gate is None else getattr(mlp, gate).weight.detach(),
                             up=getattr(mlp, up).weight.detach(), down=getattr(mlp, down).weight.detach())

    return shared


def _fused_mlp(mlp: nn.Module) -> Callable[[], ExpertWeights]:
    """GraniteMoE-shared MLP: ``input_linear`` (2S, H) = [gate; up], ``output_linear`` (H, S)."""
    def shared() -> ExpertWeights:
        w = mlp.input_linear.weight.detach()
        s = w.shape[0] // 2
        return ExpertWeights(gate=w[:s], up=w[s:], down=mlp.output_linear.weight.detach())

    return shared


def _param(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


# -- one adapter per transformers family ---------------------------------------------------------
def _topk_family(family: str, router: nn.Module, experts: nn.Module, name: str, **extra) -> Parts:
    return dict(family=family, num_experts=router.weight.shape[0], top_k=int(router.top_k), scoring="softmax",
                router_weight=router.weight.detach(),
                expert=_stacked(experts.gate_up_proj, experts.down_proj, where=name), **extra)


def _mixtral(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    return _topk_family("mixtral", block.gate, block.experts, name)


def _qwen2_moe(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    # The shared expert's output is scaled by sigmoid(shared_expert_gate(x)) (not in the view).
    return _topk_family("qwen2_moe", block.gate, block.experts, name, shared=(_mlp(block.shared_expert),))


def _qwen3_moe(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    return _topk_family("qwen3_moe", block.gate, block.experts, name)


def _olmoe(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    return _topk_family("olmoe", block.gate, block.experts, name)


def _phimoe(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    # sparsemixer always picks exactly two experts, whatever num_experts_per_tok says.
    parts = _topk_family("phimoe", block.router, block.experts, name)
    return {**parts, "top_k": 2}


def _granitemoe(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    return _topk_family("granitemoe", block.router, block.experts, name)


def _granitemoeshared(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    # The shared MLP is the decoder layer's sibling ``shared_mlp``, added outside the block.
    mlp = getattr(parent, "shared_mlp", None)
    shared = () if mlp is None else (_fused_mlp(mlp),)
    return _topk_family("granitemoeshared", block.router, block.experts, name, shared=shared)


def _deepseek_v2(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    gate = block.gate
    grouped = gate.topk_method == "group_limited_greedy"
    return _topk_family("deepseek_v2", gate, block.experts, name, shared=(_mlp(block.shared_experts),),
                        n_group=int(gate.num_group) if grouped else 1,
                        topk_group=int(gate.topk_group) if grouped else 1)


def _deepseek_v3(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    gate = block.gate
    parts = _topk_family("deepseek_v3", gate, block.experts, name, shared=(_mlp(block.shared_experts),),
                         selection_bias=gate.e_score_correction_bias.detach(), n_group=int(gate.num_group),
                         topk_group=int(gate.topk_group))
    return {**parts, "scoring": "sigmoid"}


def _llama4(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    # The router's sigmoid score multiplies each chosen expert's *input*: expert_e(s_e · x).
    ex = block.experts
    return dict(family="llama4", num_experts=block.router.weight.shape[0], top_k=int(block.router.top_k),
                scoring="sigmoid", router_weight=block.router.weight.detach(),
                expert=_stacked(ex.gate_up_proj, ex.down_proj, transposed=True, where=name),
                shared=(_mlp(block.shared_expert),))


def _gpt_oss(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    ex = block.experts
    return dict(family="gpt_oss", num_experts=block.router.weight.shape[0], top_k=int(block.router.top_k),
                scoring="softmax", router_weight=block.router.weight.detach(), router_bias=_param(block.router.bias),
                expert=_stacked(ex.gate_up_proj, ex.down_proj, transposed=True, interleaved=True, where=name))


def _switch(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    router, experts = block.router, block.experts
    num_experts = int(router.num_experts)

    def expert(e: int) -> ExpertWeights:
        _check_expert(e, num_experts)
        mlp = experts[f"expert_{e}"]
        return ExpertWeights(up=mlp.wi.weight.detach(), down=mlp.wo.weight.detach())   # (I, H), (H, I)

    return dict(family="switch_transformers", num_experts=num_experts, top_k=1, scoring="softmax",
                router_weight=router.classifier.weight.detach(), router_bias=_param(router.classifier.bias),
                expert=expert)


# -- moescope's own layers -----------------------------------------------------------------------
_MOESCOPE_SCORING = {"TopKRouter": "softmax", "CosineRouter": "softmax", "SwitchRouter": "softmax",
                     "GptOssRouter": "softmax", "ExpertChoiceRouter": "softmax", "DeepSeekV3Router": "sigmoid",
                     "Llama4Router": "sigmoid"}


def _moescope_experts(experts: Experts) -> Callable[[int], ExpertWeights]:
    if not experts.gated:
        def expert(e: int) -> ExpertWeights:
            _check_expert(e, experts.num_experts)
            return ExpertWeights(up=experts.gate_up_proj[e].detach(), down=experts.down_proj[e].detach())

        return expert
    return _stacked(experts.gate_up_proj, experts.down_proj, where="moescope Experts")


def _moescope_shared(shared: nn.Module | None) -> tuple[Callable[[], ExpertWeights], ...]:
    if shared is None:
        return ()
    ffn = shared.ffn if isinstance(shared, SharedExpert) else shared
    if not isinstance(ffn, DenseFFN):
        raise ValueError(f"unsupported shared expert {type(shared).__name__}; expected SharedExpert or DenseFFN")
    return (_mlp(ffn, gate=None if ffn.gate_proj is None else "gate_proj"),)


def _moescope_layer(block: MoELayer, parent: nn.Module | None, name: str) -> Parts:
    router = block.router
    kind = type(router).__name__
    if kind not in _MOESCOPE_SCORING:
        raise ValueError(f"{name}: unknown router {kind}; known: {', '.join(_MOESCOPE_SCORING)}")
    num_experts = block.experts.num_experts
    # Switch is top-1; an expert-choice router gives a token anywhere from 0 to E experts.
    top_k = {"SwitchRouter": 1, "ExpertChoiceRouter": num_experts}.get(kind) or int(router.top_k)
    return dict(family="moescope", num_experts=num_experts, top_k=top_k, scoring=_MOESCOPE_SCORING[kind],
                router_weight=router.weight.detach(), router_bias=_param(getattr(router, "bias", None)),
                selection_bias=_param(getattr(router, "selection_bias", None)),
                n_group=int(getattr(router, "n_group", 1)), topk_group=int(getattr(router, "topk_group", 1)),
                expert=_moescope_experts(block.experts), shared=_moescope_shared(block.shared))


def _moescope_soft(block: SoftMoELayer, parent: nn.Module | None, name: str) -> Parts:
    # Expert e's centroid: the mean of its S slot parameters (exactly its slot when S = 1).
    e, s = block.num_experts, block.slots_per_expert
    centroid = block.slots.detach().t().reshape(e, s, block.hidden).mean(1)          # (E·S, H) -> (E, H)
    return dict(family="moescope", num_experts=e, top_k=e, scoring="soft", router_weight=centroid,
                expert=_moescope_experts(block.experts))


# -- the table -----------------------------------------------------------------------------------
Adapter = Callable[[nn.Module, "nn.Module | None", str], Parts]

ADAPTERS: dict[str, Adapter] = {
    "MixtralSparseMoeBlock": _mixtral,
    "Qwen2MoeSparseMoeBlock": _qwen2_moe,
    "Qwen3MoeSparseMoeBlock": _qwen3_moe,
    "OlmoeSparseMoeBlock": _olmoe,
    "DeepseekV2Moe": _deepseek_v2,
    "DeepseekV3MoE": _deepseek_v3,
    "Llama4TextMoe": _llama4,
    "GptOssMLP": _gpt_oss,
    "PhimoeSparseMoeBlock": _phimoe,
    "GraniteMoeMoE": _granitemoe,
    "GraniteMoeSharedMoE": _granitemoeshared,
    "SwitchTransformersSparseMLP": _switch,
}
MOESCOPE_ADAPTERS: dict[type, Adapter] = {MoELayer: _moescope_layer, SoftMoELayer: _moescope_soft}

#: Human-readable family names, for error messages and documentation.
FAMILIES = ("Mixtral", "Qwen2-MoE", "Qwen3-MoE", "OLMoE", "DeepSeek-V2", "DeepSeek-V3", "Llama 4 (text)", "GPT-OSS",
            "PhiMoE", "GraniteMoE", "GraniteMoE-shared", "Switch Transformers", "moescope MoELayer/SoftMoELayer")


def supported() -> str:
    """One line naming every supported family and the block class it is recognised by."""
    blocks = ", ".join(ADAPTERS)
    return f"supported families: {', '.join(FAMILIES)} (blocks: {blocks}, MoELayer, SoftMoELayer)"


def _adapter(module: nn.Module) -> Adapter | None:
    for kind, adapter in MOESCOPE_ADAPTERS.items():
        if isinstance(module, kind):
            return adapter
    return ADAPTERS.get(type(module).__name__)


def find_moe_layers(model: nn.Module) -> list[MoELayerView]:
    """Every MoE layer of ``model``, in module order, as views indexed 0, 1, ...

    A matched block's own submodules are not searched again. Raises ``ValueError`` (listing
    the supported families) when the model holds no MoE layer this module knows.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"find_moe_layers expects a torch.nn.Module; got {type(model).__name__}")
    modules = dict(model.named_modules())
    views: list[MoELayerView] = []
    inside: list[str] = []
    for name, module in modules.items():
        if any(prefix == "" or name.startswith(prefix + ".") for prefix in inside):
            continue
        adapter = _adapter(module)
        if adapter is None:
            continue
        parent = modules.get(name.rpartition(".")[0]) if name else None
        try:
            parts = adapter(module, parent, name or type(module).__name__)
        except AttributeError as err:  # a transformers version that renamed the block's parts
            raise ValueError(f"{name or 'the model'}: {type(module).__name__} does not have the layout moescope "
                             f"expects ({err}); {supported()}") from err
        views.append(MoELayerView(name=name, index=len(views), module=module, **parts))
        inside.append(name)
    if not views:
        raise ValueError(f"no MoE layer found in {type(model).__name__} "
                         f"(a dense model, or an architecture moescope does not know); {supported()}")
    return views
