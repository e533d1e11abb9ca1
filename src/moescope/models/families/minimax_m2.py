"""MiniMax-M2 (``MiniMaxM2SparseMoeBlock``): sigmoid scores, top-k picked with a selection bias.

Routing (``MiniMaxM2TopKRouter``): ``s = sigmoid(x Wᵀ)`` (E,) in float32; the k experts are the
top-k of ``s + e_score_correction_bias`` (no groups); their weights are the unbiased ``s_i``
renormalised over the k. No shared expert; every layer is MoE.

Live: ``block.gate`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``), the
selection bias ``block.e_score_correction_bias`` (E,) — a buffer of the *block*, passed to the
router as an argument — and stacked ``block.experts.gate_up_proj`` (E, 2I, H) /
``down_proj`` (E, H, I). On disk (hub layout, Mixtral's naming): ``block_sparse_moe.gate.weight``,
``block_sparse_moe.e_score_correction_bias``, ``block_sparse_moe.experts.{e}.w1|w3|w2.weight``
(gate | up | down).

The view carries everything the block computes.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Separate
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple

W13 = Separate(gate="block_sparse_moe.experts.{e}.w1.weight", up="block_sparse_moe.experts.{e}.w3.weight",
               down="block_sparse_moe.experts.{e}.w2.weight")


def _adapter(block, parent, name):
    parts = topk_family("minimax_m2", block.gate, block.experts, name,
                        selection_bias=block.e_score_correction_bias.detach())
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="minimax_m2", title="MiniMax-M2", model_types=("minimax_m2",), blocks=("MiniMaxM2SparseMoeBlock",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.gate.weight", W13,
                  selection_bias="block_sparse_moe.e_score_correction_bias", scoring="sigmoid"),
)
