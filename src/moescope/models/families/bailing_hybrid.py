"""Bailing-Hybrid (``BailingHybridMoE``; Ling 2.5): DeepSeek-V3 routing under hybrid
linear/full attention.

Routing: as DeepSeek-V3 (see :mod:`._deepseek_like`): ``s = sigmoid(x Wᵀ)`` in float32, experts
chosen on ``s + e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups,
combine weights the unbiased ``s`` (renormalised when ``norm_topk_prob``) ×
``routed_scaling_factor``; one shared MLP of width ``n_shared_experts · moe_intermediate_size``
added unweighted. Layers whose ``mlp_layer_types`` entry is ``"dense"`` are a dense
``BailingHybridMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``; returns ``(logits, weights, indices)``), stacked ``block.experts``
``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts``. On disk (the
hub's naming, which ``save_pretrained`` restores): ``mlp.gate.weight``, the selection bias as
``mlp.gate.expert_bias``, ``mlp.experts.{e}.{gate,up,down}_proj.weight``,
``mlp.shared_experts.{gate,up,down}_proj.weight``.

The view carries everything the block computes (the scaling factor is inside the recorded weights).
The hub's ``config.json`` spells k ``num_experts_per_token`` (read by the layout) and the group
count ``num_expert_group`` (both read by the layout).
"""

from dataclasses import replace

from moescope.models.families._deepseek_like import adapter, layout
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="bailing_hybrid", title="Bailing-Hybrid", model_types=("bailing_hybrid",), blocks=("BailingHybridMoE",),
    adapter=adapter("bailing_hybrid"), hook="gate", reader=read_triple,
    layout=replace(layout(selection_bias="mlp.gate.expert_bias"),
                   top_k=("num_experts_per_token", "num_experts_per_tok"),
                   n_group=("num_expert_group", "n_group")),
)
