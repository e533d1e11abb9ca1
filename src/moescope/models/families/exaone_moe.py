"""EXAONE-MoE (``ExaoneMoeSparseMoEBlock``): DeepSeek-V3 routing — sigmoid, selection bias, groups.

Routing (``ExaoneMoeTopkRouter``): ``s = sigmoid(x Wᵀ)`` (E,) in float32; experts are chosen
on ``s + e_score_correction_bias``, restricted to the ``topk_group`` best of ``n_group``
groups (a group's score: the sum of its two best biased scores); weights are the unbiased
``s_i``, renormalised when ``norm_topk_prob``, times ``routed_scaling_factor``. One shared MLP
of width ``num_shared_experts · moe_intermediate_size`` is added unweighted. Layers whose
``mlp_layer_types`` entry is ``"dense"`` (the first ``first_k_dense_replace`` by default) are a
dense ``ExaoneMoeMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``, ``top_k``; returns ``(logits, weights, indices)``), stacked
``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts``.
On disk (hub layout): ``mlp.gate.weight``, ``mlp.e_score_correction_bias`` (beside the gate,
not inside it), ``mlp.experts.{e}.{gate,up,down}_proj.weight``,
``mlp.shared_experts.{gate,up,down}_proj.weight``.

The view carries everything the block computes (the scaling factor is inside the recorded weights).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    gate = block.gate
    parts = topk_family("exaone_moe", gate, block.experts, name, shared=(mlp(block.shared_experts),),
                        selection_bias=gate.e_score_correction_bias.detach(), n_group=int(gate.num_group),
                        topk_group=int(gate.topk_group))
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="exaone_moe", title="EXAONE-MoE", model_types=("exaone_moe",), blocks=("ExaoneMoeSparseMoEBlock",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_experts", ""),),
                  selection_bias="mlp.e_score_correction_bias", scoring="sigmoid"),
)
