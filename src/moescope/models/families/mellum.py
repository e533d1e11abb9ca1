"""Mellum (``MellumSparseMoeBlock``): softmax top-k over E experts, renormalised when ``norm_topk_prob``.

Routing (``MellumTopKRouter``, Qwen3-MoE's): softmax of ``x Wᵀ`` in float32, top-k, the k
probabilities divided by their sum when ``norm_topk_prob``. No shared expert. Layers whose
``mlp_layer_types`` entry is ``"dense"`` are a dense ``MellumMLP`` (all are sparse by default).

Live: ``block.gate`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``) and
stacked ``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I). On disk (hub layout):
``mlp.gate.weight`` and ``mlp.experts.{e}.{gate,up,down}_proj.weight``.

The view carries everything the block computes.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="mellum", title="Mellum", model_types=("mellum",), blocks=("MellumSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("mellum", block.gate, block.experts, name),
    hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp")),
)
