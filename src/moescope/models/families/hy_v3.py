"""HY-V3 (``HYV3MoE``; Hunyuan 3): sigmoid scores, top-k picked with a selection bias, scaled weights.

Routing (``HYV3TopKRouter``): ``s = sigmoid(x Wᵀ)`` in float32; the k experts are the top-k of
``s + e_score_correction_bias`` (no groups); their weights are the unbiased ``s_i`` renormalised
over the k, times ``router_scaling_factor``. One shared MLP of width
``num_shared_experts · moe_intermediate_size`` is added unweighted (in float32 when
``enable_moe_fp32_combine``). Layers whose ``mlp_layer_types`` entry is ``"dense"`` are a dense
``HYV3MLP``.

Live: ``block.gate`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``), the
selection bias ``block.e_score_correction_bias`` (E,) — a buffer of the *block*, passed to the
router as an argument — stacked ``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj``
(E, H, I), ``block.shared_experts`` (gate/up/down_proj). On disk (the hub's naming, which
``save_pretrained`` restores): ``mlp.router.gate.weight``, ``mlp.expert_bias``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``, ``mlp.shared_mlp.{gate,up,down}_proj.weight``.

The view carries everything the block computes (the scaling factor is inside the recorded weights).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    parts = topk_family("hy_v3", block.gate, block.experts, name, shared=(mlp(block.shared_experts),),
                        selection_bias=block.e_score_correction_bias.detach())
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="hy_v3", title="HY-V3", model_types=("hy_v3",), blocks=("HYV3MoE",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.router.gate.weight", glu("mlp"), shared=(glu("mlp.shared_mlp", ""),),
                  selection_bias="mlp.expert_bias", scoring="sigmoid"),
)
