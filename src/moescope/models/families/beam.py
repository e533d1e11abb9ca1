"""Beam (``BeamMoE``): DeepSeek-V3 selection, the routed scaling applied to the block's output.

Routing (``BeamTopKRouter``): ``s = sigmoid(x Wᵀ)`` in float32; experts are chosen on
``s + e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups (a group's
score: the sum of its two best biased scores; dropped groups masked with -inf); the combine
weights are the unbiased ``s`` of the k chosen, renormalised when ``norm_topk_prob``. No shared
expert. The block multiplies the experts' weighted sum by ``routed_scaling_factor`` *after*
combining, so the router's weights (what the recorder reads) do not include it. Layers whose
``mlp_layer_types`` entry is ``"dense"`` are a dense ``BeamMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``, ``top_k``; returns ``(logits, weights, indices)``), stacked
``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I). On disk (hub layout):
``mlp.gate.weight``, ``mlp.gate.e_score_correction_bias``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``.

Not in the view: ``routed_scaling_factor`` (read ``block.routed_scaling_factor``): the block's
output is ``routed_scaling_factor · Σ w·expert``. The experts evaluate SiLU(gate)·up in float32.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    gate = block.gate
    parts = topk_family("beam", gate, block.experts, name, selection_bias=gate.e_score_correction_bias.detach(),
                        n_group=int(gate.num_group), topk_group=int(gate.topk_group))
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="beam", title="Beam", model_types=("beam",), blocks=("BeamMoE",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), selection_bias="mlp.gate.e_score_correction_bias",
                  scoring="sigmoid"),
)
