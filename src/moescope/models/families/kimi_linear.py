"""Kimi-Linear (``KimiLinearMoE``): DeepSeek-V3's block under hybrid KDA / MLA attention.

Routing (``KimiLinearTopkRouter``, the rule stated in :mod:`._deepseek_like`): ``s = sigmoid(x Wᵀ)``
in float32; experts chosen on ``s + e_score_correction_bias`` within the ``topk_group`` best of
``n_group`` groups (config ``num_expert_group``); weights the unbiased ``s_i``, renormalised when
``norm_topk_prob`` (config ``moe_renormalize``), times ``routed_scaling_factor``. One shared MLP of
width ``n_shared_experts · moe_intermediate_size`` is added unweighted. Layers whose
``mlp_layer_types`` entry is ``"dense"`` (the first ``first_k_dense_replace``) are a dense
``KimiLinearMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``, ``top_k``; returns ``(logits, weights, indices)``), stacked
``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts``; the
block is the layer's ``mlp``. On disk (what ``save_pretrained`` writes, Moonshot's naming) the MoE
is under ``block_sparse_moe``: ``block_sparse_moe.gate.weight``,
``block_sparse_moe.gate.e_score_correction_bias``, ``block_sparse_moe.experts.{e}.w1|w3|w2.weight``
(gate | up | down) and ``block_sparse_moe.shared_experts.{gate,up,down}_proj.weight``.

config.json names k ``num_experts_per_token`` and the group count ``num_expert_group`` (both read by the layout).

The view carries everything the block computes (the scaling factor is inside the recorded weights).
"""

from moescope.models.families._deepseek_like import adapter
from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Separate, glu
from moescope.models.readers import read_triple

W13 = Separate(gate="block_sparse_moe.experts.{e}.w1.weight", up="block_sparse_moe.experts.{e}.w3.weight",
               down="block_sparse_moe.experts.{e}.w2.weight")

FAMILY = Family(
    name="kimi_linear", title="Kimi-Linear", model_types=("kimi_linear",), blocks=("KimiLinearMoE",),
    adapter=adapter("kimi_linear"), hook="gate", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.gate.weight", W13,
                  shared=(glu("block_sparse_moe.shared_experts", ""),),
                  selection_bias="block_sparse_moe.gate.e_score_correction_bias", scoring="sigmoid",
                  top_k=("num_experts_per_token", "num_experts_per_tok"),
                  n_group=("num_expert_group", "n_group")),
)
