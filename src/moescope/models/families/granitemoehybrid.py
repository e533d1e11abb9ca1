"""GraniteMoE-hybrid (``GraniteMoeHybridMoE``): top-k of the logits, the softmax taken over the
k chosen logits only (= softmax over E renormalised over the top k).

Live: ``block_sparse_moe.router`` (``GraniteMoeHybridTopKRouter``, returns ``(logits, weights,
indices)``) and stacked experts ``block_sparse_moe.experts.gate_up_proj`` (E, 2I, H) rows
[gate; up], ``down_proj`` (E, H, I). The shared MLP is the decoder layer's ``shared_mlp``, a
*sibling* of the block (``input_linear`` (2S, H) = [gate; up], ``output_linear`` (H, S)),
added to the block's output by the decoder layer, which then scales the sum by
``residual_multiplier`` (outside the view). With ``num_local_experts == 0`` the model is dense
(no block). Mamba-2 and attention layers both carry an MoE block. On disk:
``block_sparse_moe.router.layer.weight``, ``block_sparse_moe.input_linear.weight`` (E, 2I, H),
``block_sparse_moe.output_linear.weight`` (E, H, I), ``shared_mlp.input_linear.weight`` (2S, H),
``shared_mlp.output_linear.weight`` (H, S).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Fused, Layout, Stacked
from moescope.models.parts import fused_mlp, topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    mlp = getattr(parent, "shared_mlp", None)
    shared = () if mlp is None else (fused_mlp(mlp),)
    return topk_family("granitemoehybrid", block.router, block.experts, name, shared=shared)


FAMILY = Family(
    name="granitemoehybrid", title="GraniteMoE-hybrid", model_types=("granitemoehybrid",),
    blocks=("GraniteMoeHybridMoE",), adapter=_adapter, hook="router", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.router.layer.weight",
                  Stacked("block_sparse_moe.input_linear.weight", "block_sparse_moe.output_linear.weight"),
                  shared=(Fused("shared_mlp.input_linear.weight", "shared_mlp.output_linear.weight"),)),
)
