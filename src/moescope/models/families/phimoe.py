"""PhiMoE (``PhimoeSparseMoeBlock``): sparsemixer routing, which always picks exactly two experts
whatever ``num_experts_per_tok`` says; each multiplier is a softmax over a differently masked set
of the logits (so the larger one need not belong to the first pick, the top logit).

Live: ``block.router`` (``PhimoeTopKRouter``, returns ``(logits, multipliers, experts)``; the
recorder hooks it, as sparsemixer's threshold makes the choice unrecoverable from the logits) and
stacked experts ``gate_up_proj`` (E, 2I, H) rows [gate; up], ``down_proj`` (E, H, I). The view's
``top_k`` is 2.

On disk (prefix ``model.layers.{i}``, hub layout): router ``block_sparse_moe.gate.weight``, experts
``block_sparse_moe.experts.{e}.w1|w3|w2.weight`` (gate | up | down).
"""

from torch import nn

from moescope.models.family import Family, Parts
from moescope.models.layout import DECODER, Layout, Separate
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple

W13 = Separate(gate="block_sparse_moe.experts.{e}.w1.weight", up="block_sparse_moe.experts.{e}.w3.weight",
               down="block_sparse_moe.experts.{e}.w2.weight")


def adapt(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    return {**topk_family("phimoe", block.router, block.experts, name), "top_k": 2}


FAMILY = Family(
    name="phimoe", title="PhiMoE", model_types=("phimoe",), blocks=("PhimoeSparseMoeBlock",),
    adapter=adapt, hook="router", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.gate.weight", W13),
)
