"""Flint (``FlintSparseMoeBlock``): sigmoid top-k without a bias, plus an always-added shared expert.

Routing (``FlintTopKRouter``): ``s = sigmoid(x Wᵀ)`` in float32; the k experts are the top-k of
``s`` (no selection bias, no groups); their weights are the k scores, renormalised to sum to 1
when ``norm_topk_prob``. One shared MLP of width ``shared_expert_intermediate_size`` is always
added in full (unlike Qwen2-MoE, no sigmoid gate). Layers in ``mlp_only_layers`` (or off the
``decoder_sparse_step`` grid) are a dense ``FlintMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``),
stacked ``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I),
``block.shared_expert`` (gate/up/down_proj). On disk (hub layout): ``mlp.gate.weight``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``, ``mlp.shared_expert.{gate,up,down}_proj.weight``.

The view carries everything the block computes.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    parts = topk_family("flint", block.gate, block.experts, name, shared=(mlp(block.shared_expert),))
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="flint", title="Flint", model_types=("flint",), blocks=("FlintSparseMoeBlock",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_expert", ""),), scoring="sigmoid"),
)
