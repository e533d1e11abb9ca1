"""GraniteMoE-SWA (``GraniteMoeSWAMoE``): top-k of the logits, the softmax over the k chosen logits.

Routing (``GraniteMoeSWATopKRouter``): the k largest logits ``x Wᵀ`` are chosen; their weights
are the softmax over those k logits (= the softmax over E renormalised over the k). Every
decoder layer carries a block; sliding-window and full attention alternate per ``layer_types``.

Live: ``block_sparse_moe.router`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights,
indices)``), stacked ``block_sparse_moe.experts.gate_up_proj`` (E, 2I, H) / ``down_proj``
(E, H, I). The shared MLP (``shared_intermediate_size > 0``) is the decoder layer's
``shared_mlp``, a *sibling* of the block (``input_linear`` (2S, H) = [gate; up],
``output_linear`` (H, S)), added to the block's output by the decoder layer. On disk (what
``save_pretrained`` writes): ``block_sparse_moe.router.weight``, stacked
``block_sparse_moe.experts.gate_up_proj`` (E, 2I, H) / ``block_sparse_moe.experts.down_proj``
(E, H, I), ``shared_mlp.input_linear.weight``, ``shared_mlp.output_linear.weight``.

The view carries everything; note only that the block's own output is the routed sum alone (the
shared MLP is added outside the block).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Fused, Layout, Stacked
from moescope.models.parts import fused_mlp, topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    mlp = getattr(parent, "shared_mlp", None)
    shared = () if mlp is None else (fused_mlp(mlp),)
    return topk_family("granitemoe_swa", block.router, block.experts, name, shared=shared)


FAMILY = Family(
    name="granitemoe_swa", title="GraniteMoE-SWA", model_types=("granitemoe_swa",), blocks=("GraniteMoeSWAMoE",),
    adapter=_adapter, hook="router", reader=read_triple,
    layout=Layout(DECODER, "block_sparse_moe.router.weight",
                  Stacked("block_sparse_moe.experts.gate_up_proj", "block_sparse_moe.experts.down_proj"),
                  shared=(Fused("shared_mlp.input_linear.weight", "shared_mlp.output_linear.weight"),)),
)
