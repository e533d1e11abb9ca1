"""GLM-4-MoE (``Glm4MoeMoE``; GLM-4.5/4.6/4.7): DeepSeek-V3 routing, checked in transformers 5.24.

Routing: sigmoid scores, chosen on score + ``e_score_correction_bias`` within the
``topk_group`` best of ``n_group`` groups (group score = sum of its two best biased scores),
combine weights the unbiased sigmoids (renormalised when ``norm_topk_prob``) ×
``routed_scaling_factor`` (see :mod:`._deepseek_like`).

Live: ``block.gate`` (``Glm4MoeTopkRouter``, returns ``(logits, weights, indices)``), stacked
``block.experts`` ``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), shared MLP
``block.shared_experts`` (width n_shared·moe_intermediate_size). The first
``first_k_dense_replace`` layers hold a dense ``Glm4MoeMLP`` instead.

On disk: ``model.layers.{i}.mlp.gate.weight``, ``mlp.gate.e_score_correction_bias`` (E,),
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``, ``mlp.shared_experts.*.weight``.
Sarvam-MoE (``sarvam_moe``) is loaded by transformers as this very model class; its
checkpoints name the selection bias ``mlp.gate.expert_bias`` instead.
"""

from dataclasses import replace

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="glm4_moe", title="GLM-4-MoE", model_types=("glm4_moe", "sarvam_moe"), blocks=("Glm4MoeMoE",),
    adapter=adapter("glm4_moe"), hook="gate", reader=read_triple,
    layout=replace(LAYOUT, selection_bias=("mlp.gate.e_score_correction_bias", "mlp.gate.expert_bias")),
)
