"""GraniteMoE (``GraniteMoeMoE``): top-k of the logits, softmax over the k chosen logits.

Live: ``block.router`` (``GraniteMoeTopKRouter``, returns ``(logits, weights, indices)``; the
recorder hooks it) and stacked experts ``gate_up_proj`` (E, 2I, H) rows [gate; up], ``down_proj``
(E, H, I).

On disk (prefix ``model.layers.{i}``): router ``block_sparse_moe.router.layer.weight``, experts
stacked as ``block_sparse_moe.input_linear.weight`` (E, 2I, H) rows [gate; up] (halves) and
``block_sparse_moe.output_linear.weight`` (E, H, I).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Stacked
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple

#: The stacked experts on disk, shared with GraniteMoE-shared.
EXPERTS = Stacked("block_sparse_moe.input_linear.weight", "block_sparse_moe.output_linear.weight")

FAMILY = Family(
    name="granitemoe", title="GraniteMoE", model_types=("granitemoe",), blocks=("GraniteMoeMoE",),
    adapter=lambda block, parent, name: topk_family("granitemoe", block.router, block.experts, name),
    hook="router", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.router.layer.weight", EXPERTS),
)
