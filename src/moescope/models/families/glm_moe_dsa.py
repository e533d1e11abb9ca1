"""GLM-MoE-DSA (``GlmMoeDsaMoE``; GLM-5): DeepSeek-V3 routing under MLA attention with a
DeepSeek-sparse-attention indexer.

Routing: as DeepSeek-V3 (see :mod:`._deepseek_like`): ``s = sigmoid(x Wᵀ)`` in float32, experts
chosen on ``s + e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups,
combine weights the unbiased ``s`` (renormalised when ``norm_topk_prob``) ×
``routed_scaling_factor``; one shared MLP of width ``n_shared_experts · moe_intermediate_size``
added unweighted. Checked in transformers 5.24: router, experts and block are DeepSeek-V3's line
for line. Layers whose ``mlp_layer_types`` entry is ``"dense"`` are a dense ``GlmMoeDsaMLP``.

Live block and on-disk layout: DeepSeek-V3's, described once in :mod:`._deepseek_like`.

The view carries everything the block computes (the scaling factor is inside the recorded weights).
"""

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="glm_moe_dsa", title="GLM-MoE-DSA", model_types=("glm_moe_dsa",), blocks=("GlmMoeDsaMoE",),
    adapter=adapter("glm_moe_dsa"), hook="gate", reader=read_triple, layout=LAYOUT,
)
