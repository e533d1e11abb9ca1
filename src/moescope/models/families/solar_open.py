"""Solar-Open (``SolarOpenMoE``): DeepSeek-V3's block in every layer.

Routing (``SolarOpenTopkRouter``, the rule stated in :mod:`._deepseek_like`): ``s = sigmoid(x Wᵀ)``
in float32; experts chosen on ``s + e_score_correction_bias`` within the ``topk_group`` best of
``n_group`` groups; weights the unbiased ``s_i``, renormalised when ``norm_topk_prob``, times
``routed_scaling_factor``. One shared MLP of width ``n_shared_experts · moe_intermediate_size``
is added unweighted. No dense layers.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``, ``top_k``; returns ``(logits, weights, indices)``), stacked
``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts``.
On disk (hub layout, :data:`._deepseek_like.LAYOUT`): ``mlp.gate.weight``,
``mlp.gate.e_score_correction_bias``, ``mlp.experts.{e}.{gate,up,down}_proj.weight``,
``mlp.shared_experts.{gate,up,down}_proj.weight``.

The view carries everything the block computes (the scaling factor is inside the recorded weights).
"""

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="solar_open", title="Solar-Open", model_types=("solar_open",), blocks=("SolarOpenMoE",),
    adapter=adapter("solar_open"), hook="gate", reader=read_triple, layout=LAYOUT,
)
