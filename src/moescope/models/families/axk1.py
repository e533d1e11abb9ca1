"""A.X-K1 (``AXK1MoE``): DeepSeek-V3 routing, then an RMSNorm on the block's output.

Routing: as DeepSeek-V3 (see :mod:`._deepseek_like`): ``s = sigmoid(x Wᵀ)`` in float32, experts
chosen on ``s + e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups,
combine weights the unbiased ``s`` (renormalised when ``norm_topk_prob``) ×
``routed_scaling_factor``; one shared MLP of width ``n_shared_experts · moe_intermediate_size``
added unweighted. Layers whose ``mlp_layer_types`` entry is ``"dense"`` are a dense ``AXK1MLP``.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``; returns ``(logits, weights, indices)``), stacked ``block.experts``
``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts``, and
``block.post_mlp_layernorm``. On disk: ``mlp.gate.weight``, ``mlp.gate.e_score_correction_bias``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``, ``mlp.shared_experts.{gate,up,down}_proj.weight``;
the norm is stored at the decoder layer, ``post_mlp_layernorm.weight``.

Not in the view: ``post_mlp_layernorm`` — the block returns
``RMSNorm(Σ w·expert + shared)``, not the sum; reproducing its output needs
``block.post_mlp_layernorm``.
"""

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="axk1", title="A.X-K1", model_types=("axk1",), blocks=("AXK1MoE",),
    adapter=adapter("axk1"), hook="gate", reader=read_triple, layout=LAYOUT,
)
