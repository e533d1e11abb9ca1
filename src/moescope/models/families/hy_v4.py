"""HY-V4 (``HYV4MoE``; Hunyuan 4): DeepSeek-V3 routing inside hyper-connections.

Routing (``HYV4TopkRouter``, DeepSeek-V3's line for line, see :mod:`._deepseek_like`):
``s = sigmoid(x Wᵀ)`` in float32, experts chosen on ``s + e_score_correction_bias`` within the
``topk_group`` best of ``n_group`` groups, combine weights the unbiased ``s`` (renormalised when
``norm_topk_prob``) × ``routed_scaling_factor``; one shared MLP of width
``n_shared_experts · moe_intermediate_size`` added unweighted. Layers whose ``mlp_layer_types``
entry is ``"dense"`` are a dense ``HYV4MLP``. The decoder layer feeds the block one mix of its
``hc_mult`` residual streams (hyper-connections, outside the block).

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``; returns ``(logits, weights, indices)``), stacked ``block.experts``
``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts``
(gate/up/down_proj). On disk (what ``save_pretrained`` writes): ``mlp.gate.weight``,
``mlp.gate.e_score_correction_bias``, stacked ``mlp.experts.gate_up_proj`` (E, 2I, H) /
``mlp.experts.down_proj`` (E, H, I), and the shared MLP with its gate projection renamed:
``mlp.shared_experts.linear_gate.weight``, ``up_proj.weight``, ``down_proj.weight``.

The view carries everything the block computes (the scaling factor is inside the recorded weights).
"""

from moescope.models.families._deepseek_like import adapter
from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Separate, Stacked
from moescope.models.readers import read_triple

SHARED = Separate(gate="mlp.shared_experts.linear_gate.weight", up="mlp.shared_experts.up_proj.weight",
                  down="mlp.shared_experts.down_proj.weight")

FAMILY = Family(
    name="hy_v4", title="HY-V4", model_types=("hy_v4",), blocks=("HYV4MoE",),
    adapter=adapter("hy_v4"), hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", Stacked("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
                  shared=(SHARED,), selection_bias="mlp.gate.e_score_correction_bias", scoring="sigmoid"),
)
