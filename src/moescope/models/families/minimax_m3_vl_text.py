"""MiniMax-M3 (``MiniMaxM3VLSparseMoeBlock``, the text model of MiniMax-M3-VL): sigmoid scores, a
selection bias, a scaled routed sum, clamped-SwiGLU experts.

Routing (``MiniMaxM3VLTopKRouter``, as MiniMax-M2): ``s = sigmoid(x Wᵀ)`` (E,) in float32; the k
experts are the top-k of ``s + e_score_correction_bias`` (no groups); their weights are the
unbiased ``s_i`` always renormalised over the k. The block multiplies the routed sum by
``routed_scaling_factor`` *after* the experts and adds one ungated shared MLP. Every MLP, routed
or shared, is GPT-OSS's clamped SwiGLU with halves instead of interleaving:
``down · ((clamp(u, -L, L) + 1) · g' · sigmoid(α g'))``, ``g' = min(g, L)`` (α = ``swiglu_alpha``,
L = ``swiglu_limit``). Layers whose ``mlp_layer_types`` entry is ``"dense"`` are a dense MLP.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,) buffer, ``top_k``;
returns ``(logits, weights, indices)``), stacked ``block.experts.gate_up_proj`` (E, 2I, H) rows
[gate; up] / ``down_proj`` (E, H, I), ``block.shared_experts`` (``gate_up_proj`` a (2S, H) Linear,
``down_proj``) and ``block.routed_scaling_factor``. On disk (what ``save_pretrained`` writes; the
experts stay stacked): ``mlp.gate.weight``, ``mlp.gate.e_score_correction_bias``,
``mlp.experts.gate_up_proj`` (E, 2I, H), ``mlp.experts.down_proj`` (E, H, I),
``mlp.shared_experts.gate_up_proj.weight`` (2S, H), ``mlp.shared_experts.down_proj.weight``.

Not in the view: the activation (clamped SwiGLU with α and L, not SiLU) and
``routed_scaling_factor``, which is applied outside the router, so it is not in the recorded
weights either: reproducing the block's output needs ``block.routed_scaling_factor`` and the
experts' ``swiglu_alpha`` / ``swiglu_limit``.
"""

from collections.abc import Callable

from torch import nn

from moescope.models.family import Family
from moescope.models.layout import DECODER, Fused, Layout, Stacked
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple
from moescope.models.view import ExpertWeights


def fused_gate_up(module: nn.Module) -> Callable[[], ExpertWeights]:
    """A shared MLP whose ``gate_up_proj`` Linear (2S, H) holds [gate; up] and ``down_proj`` (H, S)."""
    def shared() -> ExpertWeights:
        w = module.gate_up_proj.weight.detach()
        s = w.shape[0] // 2
        return ExpertWeights(gate=w[:s], up=w[s:], down=module.down_proj.weight.detach())

    return shared


def _adapter(block, parent, name):
    gate = block.gate
    parts = topk_family("minimax_m3_vl_text", gate, block.experts, name, shared=(fused_gate_up(block.shared_experts),),
                        selection_bias=gate.e_score_correction_bias.detach())
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="minimax_m3_vl_text", title="MiniMax-M3", model_types=("minimax_m3_vl_text",),
    blocks=("MiniMaxM3VLSparseMoeBlock",), adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", Stacked("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
                  shared=(Fused("mlp.shared_experts.gate_up_proj.weight", "mlp.shared_experts.down_proj.weight"),),
                  selection_bias="mlp.gate.e_score_correction_bias", scoring="sigmoid"),
)
