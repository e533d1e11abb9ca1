"""Jamba (``JambaSparseMoeBlock``): softmax over E experts, top-k, the k weights *not*
renormalised (they sum to less than 1).

Live: ``feed_forward.router`` (``JambaTopKRouter``, returns ``(logits, weights, indices)``) and
stacked experts ``feed_forward.experts.gate_up_proj`` (E, 2I, H) rows [gate; up],
``down_proj`` (E, H, I). Only layers with ``i % expert_layer_period == expert_layer_offset``
are MoE; the others hold a dense ``JambaMLP`` under the same name (no router: not taken for
MoE, on disk or live). On disk: ``feed_forward.router.weight`` and
``feed_forward.experts.{e}.gate_proj|up_proj|down_proj.weight``.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="jamba", title="Jamba", model_types=("jamba",), blocks=("JambaSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("jamba", block.router, block.experts, name),
    hook="router", reader=read_triple,
    layout=Layout(DECODER, "feed_forward.router.weight", glu("feed_forward")),
)
