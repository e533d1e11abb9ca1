"""dots.llm1 (``Dots1MoE``, rednote-hilab): DeepSeek-V3 routing, checked in transformers 5.24.

Routing: as DeepSeek-V3 (see :mod:`._deepseek_like`): sigmoid scores, selection by score +
``e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups, combine
weights the unbiased sigmoids (renormalised when ``norm_topk_prob``, off by default) ×
``routed_scaling_factor``.

Live: ``block.gate`` (``Dots1TopkRouter``, returns ``(logits, weights, indices)``), stacked
``block.experts`` ``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), shared MLP
``block.shared_experts``. The first ``first_k_dense_replace`` layers hold a dense ``Dots1MLP``.

On disk: ``model.layers.{i}.mlp.gate.weight``, ``mlp.gate.e_score_correction_bias`` (E,),
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``, ``mlp.shared_experts.*.weight``.
"""

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="dots1", title="dots.llm1", model_types=("dots1",), blocks=("Dots1MoE",),
    adapter=adapter("dots1"), hook="gate", reader=read_triple, layout=LAYOUT,
)
