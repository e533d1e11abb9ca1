"""DeepSeek-V3.2 (``DeepseekV32MoE``): DeepSeek-V3's MoE under sparse (indexer) attention.

Routing: as DeepSeek-V3 (see :mod:`._deepseek_like`): sigmoid scores, selection by score +
``e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups, combine
weights the unbiased sigmoids (renormalised when ``norm_topk_prob``) × ``routed_scaling_factor``.
Checked in transformers 5.24: the router, experts and MoE block are line for line GLM-4-MoE's;
only the attention (DeepSeek Sparse Attention's lightning indexer) is new.

Live: ``block.gate`` (``DeepseekV32TopkRouter``, returns ``(logits, weights, indices)``),
stacked ``block.experts`` ``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), shared MLP
``block.shared_experts``. Layers whose ``mlp_layer_types`` entry is ``"dense"`` (the first
``first_k_dense_replace``) hold a ``DeepseekV32MLP``.

On disk: ``model.layers.{i}.mlp.gate.weight``, ``mlp.gate.e_score_correction_bias`` (E,),
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``, ``mlp.shared_experts.*.weight``.
"""

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="deepseek_v32", title="DeepSeek-V3.2", model_types=("deepseek_v32",), blocks=("DeepseekV32MoE",),
    adapter=adapter("deepseek_v32"), hook="gate", reader=read_triple, layout=LAYOUT,
)
