"""Laguna (``LagunaSparseMoeBlock``): sigmoid of soft-capped logits, a selection bias, a scaled sum.

Routing (``LagunaTopKRouter``): logits ``z = x Wᵀ`` (E,), in float32, soft-capped to
``c·tanh(z/c)`` when ``moe_router_logit_softcapping`` c > 0; ``s = sigmoid(z)``; the k experts are
the top-k of ``s + e_score_correction_bias``; their weights are the unbiased ``s_i`` always
renormalised over the k. The block multiplies the routed sum by ``moe_routed_scaling_factor``
*after* the experts, then adds one ungated shared MLP. Layers whose ``mlp_layer_types`` entry is
``"dense"`` (the first, by default) are a dense ``LagunaMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,) frozen parameter,
``top_k``; returns ``(capped logits, weights, indices)``), stacked ``block.experts.gate_up_proj``
(E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts`` and ``block.routed_scaling_factor``.
On disk (what ``save_pretrained`` writes): ``mlp.gate.weight``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``, the selection bias at
``mlp.experts.e_score_correction_bias`` (E,), and the shared MLP under the singular
``mlp.shared_expert.{gate,up,down}_proj.weight``.

Not in the view: the soft cap (the recorded scores are the sigmoid of the *capped* logits the
router returns; ``router_weight`` gives the uncapped ones) and ``routed_scaling_factor``, which is
applied outside the router, so it is not in the recorded weights either: reproducing the block's
output needs ``block.routed_scaling_factor``.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    gate = block.gate
    parts = topk_family("laguna", gate, block.experts, name, shared=(mlp(block.shared_experts),),
                        selection_bias=gate.e_score_correction_bias.detach())
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="laguna", title="Laguna", model_types=("laguna",), blocks=("LagunaSparseMoeBlock",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_expert", ""),),
                  selection_bias="mlp.experts.e_score_correction_bias", scoring="sigmoid"),
)
