"""MiniMax (``MiniMaxSparseMoeBlock``): Mixtral's routing, softmax top-k over E experts, the k
weights renormalised to sum to 1.

Live: ``mlp.gate`` (``MiniMaxTopKRouter``, returns ``(logits, weights, indices)``) and stacked
experts ``mlp.experts.gate_up_proj`` (E, 2I, H) rows [gate; up], ``down_proj`` (E, H, I). Every
decoder layer is MoE. On disk (hub layout, what ``save_pretrained`` writes):
``block_sparse_moe.gate.weight`` and ``block_sparse_moe.experts.{e}.w1|w3|w2.weight``
(gate | up | down) — the live block is ``mlp``, the disk prefix ``block_sparse_moe``.

Outside the block: the decoder mixes residual and block output as
``residual·mlp_alpha_factor + block·mlp_beta_factor`` (the view describes the block alone), and
the attention alternates lightning (linear) and softmax layers, which routing does not see.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Separate
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple

W13 = Separate(gate="block_sparse_moe.experts.{e}.w1.weight", up="block_sparse_moe.experts.{e}.w3.weight",
               down="block_sparse_moe.experts.{e}.w2.weight")

FAMILY = Family(
    name="minimax", title="MiniMax", model_types=("minimax",), blocks=("MiniMaxSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("minimax", block.gate, block.experts, name),
    hook="gate", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.gate.weight", W13),
)
