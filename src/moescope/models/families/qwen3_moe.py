"""Qwen3-MoE (``Qwen3MoeSparseMoeBlock``): softmax top-k, renormalised when ``norm_topk_prob``.

Live: ``block.gate`` (``Qwen3MoeTopKRouter``, returns ``(logits, weights, indices)``; the recorder
hooks it) and stacked experts ``gate_up_proj`` (E, 2I, H) rows [gate; up], ``down_proj`` (E, H, I).
On disk (prefix ``model.layers.{i}``): router ``mlp.gate.weight``, experts
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple
from moescope.moe.lift import lift_topk

FAMILY = Family(
    name="qwen3_moe", title="Qwen3-MoE", model_types=("qwen3_moe",), blocks=("Qwen3MoeSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("qwen3_moe", block.gate, block.experts, name),
    hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp")),
    from_hf=lift_topk,
)
