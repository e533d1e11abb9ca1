"""A.X-K2 (``AXK2MoE``): DeepSeek-V3 routing whose groups are optional and masked with zero.

Routing (``AXK2TopkRouter``): ``s = sigmoid(x Wᵀ)`` in float32; experts are chosen as the top-k
of ``s + e_score_correction_bias``. When ``n_group`` is set, the scores of experts outside the
``topk_group`` best of ``n_group`` groups (a group's score: the sum of its two best biased
scores) are replaced by **0**, not -inf, "to match the reference implementation": an expert of a
dropped group can still be chosen when fewer than k kept experts have a positive biased score.
With ``n_group`` None (the "light" checkpoints) there are no groups. Weights: the unbiased
``s`` of the k chosen, renormalised when ``norm_topk_prob``, × ``routed_scaling_factor``. One
shared MLP of width ``n_shared_experts · moe_intermediate_size`` is added unweighted. Layers
whose ``mlp_layer_types`` entry is ``"dense"`` are a dense ``AXK2MLP``.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group`` (None without groups); returns ``(logits, weights, indices)``), stacked
``block.experts`` ``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts``.
On disk: ``mlp.gate.weight``, ``mlp.gate.e_score_correction_bias``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``, ``mlp.shared_experts.{gate,up,down}_proj.weight``.

Not in the view: the zero fill of dropped groups (the view's ``n_group``/``topk_group`` describe
DeepSeek-V3's -inf masking); the recorded choices are what the block used either way.
"""

from moescope.models.families._deepseek_like import LAYOUT
from moescope.models.family import Family
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    gate = block.gate
    grouped = gate.num_group is not None
    parts = topk_family("axk2", gate, block.experts, name, shared=(mlp(block.shared_experts),),
                        selection_bias=gate.e_score_correction_bias.detach().reshape(-1),
                        n_group=int(gate.num_group) if grouped else 1,
                        topk_group=int(gate.topk_group) if grouped else 1)
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="axk2", title="A.X-K2", model_types=("axk2",), blocks=("AXK2MoE",),
    adapter=_adapter, hook="gate", reader=read_triple, layout=LAYOUT,
)
