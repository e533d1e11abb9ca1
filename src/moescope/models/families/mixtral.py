"""Mixtral (``MixtralSparseMoeBlock``): softmax top-k over E experts, the k weights renormalised.

Live: ``block.gate`` (``MixtralTopKRouter``, returns ``(logits, weights, indices)``) and stacked
experts ``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I). On disk (hub layout):
``block_sparse_moe.gate.weight`` and one ``w1|w3|w2`` (gate | up | down) per expert.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Separate
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple
from moescope.moe.lift import lift_mixtral

W13 = Separate(gate="block_sparse_moe.experts.{e}.w1.weight", up="block_sparse_moe.experts.{e}.w3.weight",
               down="block_sparse_moe.experts.{e}.w2.weight")

FAMILY = Family(
    name="mixtral", title="Mixtral", model_types=("mixtral",), blocks=("MixtralSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("mixtral", block.gate, block.experts, name),
    hook="gate", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.gate.weight", W13),
    from_hf=lift_mixtral,
)
