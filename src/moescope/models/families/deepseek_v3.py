"""DeepSeek-V3 (``DeepseekV3MoE``): auxiliary-loss-free routing (arXiv:2412.19437 §2.1.2), the
rule :mod:`._deepseek_like` states and shares with the families that copy it: sigmoid scores,
experts chosen on score + ``e_score_correction_bias`` within the best ``topk_group`` of ``n_group``
groups, combine weights the unbiased scores (renormalised when ``norm_topk_prob``) ×
``routed_scaling_factor``; one always-on shared MLP.

Live: ``block.gate`` (``DeepseekV3TopkRouter``, returns ``(logits, weights, indices)``; the recorder
hooks it, because the bias and the groups make the choice differ from the top-k of the logits),
stacked experts ``gate_up_proj`` (E, 2I, H) rows [gate; up], ``down_proj`` (E, H, I), and
``block.shared_experts``: the ``n_shared_experts`` shared experts fused into one MLP, described as
one shared expert of that width. The recorded scores are the sigmoid *without* the selection bias.

On disk (prefix ``model.layers.{i}``; the first ``first_k_dense_replace`` layers are dense): router
``mlp.gate.weight`` and ``mlp.gate.e_score_correction_bias`` (E,), experts
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``, shared ``mlp.shared_experts.*.weight``.
The hub's FP8 checkpoints (``weight_scale_inv``) are refused as quantised.
"""

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple
from moescope.moe.lift import lift_deepseek_v3

FAMILY = Family(
    name="deepseek_v3", title="DeepSeek-V3", model_types=("deepseek_v3", "sarvam_mla"), blocks=("DeepseekV3MoE",),
    adapter=adapter("deepseek_v3"), hook="gate", reader=read_triple, layout=LAYOUT,
    from_hf=lift_deepseek_v3,
)
