"""GraniteMoE-shared (``GraniteMoeSharedMoE``): GraniteMoE's routing plus a shared MLP that the
*decoder layer* adds beside the block (it is the block's sibling ``shared_mlp``, not inside it).

Live: ``block.router`` (``GraniteMoeSharedTopKRouter``, returns ``(logits, weights, indices)``; the
recorder hooks it), stacked experts ``gate_up_proj`` (E, 2I, H) rows [gate; up], ``down_proj``
(E, H, I); the parent layer's ``shared_mlp`` with ``input_linear`` (2S, H) = [gate; up] and
``output_linear`` (H, S). The view's shared expert is that sibling (absent when the parent is).

On disk (prefix ``model.layers.{i}``): router ``block_sparse_moe.router.layer.weight``, experts
``block_sparse_moe.input_linear.weight`` (E, 2I, H) / ``block_sparse_moe.output_linear.weight``
(E, H, I), shared ``shared_mlp.input_linear.weight`` (2S, H) and ``shared_mlp.output_linear.weight``.
"""

from torch import nn

from moescope.models.families.granitemoe import EXPERTS
from moescope.models.family import Family, Parts
from moescope.models.layout import DECODER, Fused, Layout
from moescope.models.parts import fused_mlp, topk_family
from moescope.models.readers import read_triple


def adapt(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    shared_mlp = getattr(parent, "shared_mlp", None)
    shared = () if shared_mlp is None else (fused_mlp(shared_mlp),)
    return topk_family("granitemoeshared", block.router, block.experts, name, shared=shared)


FAMILY = Family(
    name="granitemoeshared", title="GraniteMoE-shared", model_types=("granitemoeshared",),
    blocks=("GraniteMoeSharedMoE",), adapter=adapt, hook="router", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.router.layer.weight", EXPERTS,
                  shared=(Fused("shared_mlp.input_linear.weight", "shared_mlp.output_linear.weight"),)),
)
