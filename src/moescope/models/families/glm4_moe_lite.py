"""GLM-4-MoE-Lite (``Glm4MoeLiteMoE``; GLM-4.7-Flash): DeepSeek-V3 routing with MLA attention.

Routing: as DeepSeek-V3 (see :mod:`._deepseek_like`): sigmoid scores, selection by score +
``e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups, combine
weights the unbiased sigmoids (renormalised when ``norm_topk_prob``) × ``routed_scaling_factor``.
Checked in transformers 5.24: the router, experts and MoE block are line for line GLM-4-MoE's.

Live: ``block.gate`` (``Glm4MoeLiteTopkRouter``, returns ``(logits, weights, indices)``),
stacked ``block.experts`` ``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), shared MLP
``block.shared_experts``. Layers whose ``mlp_layer_types`` entry is ``"dense"`` hold a
``Glm4MoeLiteMLP`` instead.

On disk: ``model.layers.{i}.mlp.gate.weight``, ``mlp.gate.e_score_correction_bias`` (E,),
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``, ``mlp.shared_experts.*.weight``.
"""

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="glm4_moe_lite", title="GLM-4-MoE-Lite", model_types=("glm4_moe_lite",), blocks=("Glm4MoeLiteMoE",),
    adapter=adapter("glm4_moe_lite"), hook="gate", reader=read_triple, layout=LAYOUT,
)
