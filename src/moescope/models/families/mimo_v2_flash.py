"""MiMo-V2-Flash (``MiMoV2FlashMoE``): DeepSeek-V3 routing without a shared expert.

Routing (``MiMoV2FlashTopkRouter``, the rule stated in :mod:`._deepseek_like`):
``s = sigmoid(x Wᵀ)`` in float32; experts chosen on ``s + e_score_correction_bias`` within the
``topk_group`` best of ``n_group`` groups (a group's score: the sum of its two best biased
scores); weights the unbiased ``s_i``, renormalised when ``norm_topk_prob``, times
``routed_scaling_factor``. No shared expert. Layers whose ``mlp_layer_types`` entry is
``"dense"`` (the first, by default) are a dense ``MiMoV2FlashMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``, ``top_k``; returns ``(logits, weights, indices)``) and stacked
``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I). On disk (hub layout):
``mlp.gate.weight``, ``mlp.gate.e_score_correction_bias``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``.

The view carries everything the block computes (the scaling factor is inside the recorded weights).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    gate = block.gate
    parts = topk_family("mimo_v2_flash", gate, block.experts, name,
                        selection_bias=gate.e_score_correction_bias.detach(), n_group=int(gate.num_group),
                        topk_group=int(gate.topk_group))
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="mimo_v2_flash", title="MiMo-V2-Flash", model_types=("mimo_v2_flash",), blocks=("MiMoV2FlashMoE",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), selection_bias="mlp.gate.e_score_correction_bias",
                  scoring="sigmoid"),
)
