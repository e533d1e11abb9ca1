"""LFM2-MoE (``Lfm2MoeSparseMoeBlock``): sigmoid scores over E experts; the top k are chosen on
sigmoid + ``expert_bias`` (a selection bias, with ``use_expert_bias``) but weighted by the
unbiased sigmoids, renormalised (with ``norm_topk_prob``, denominator + 1e-6) and multiplied
by ``routed_scaling_factor``.

Live: ``feed_forward.gate`` (``Lfm2MoeTopKRouter``, returns ``(logits, weights, indices)``; it
is handed the bias by the block), the bias is the *block's* buffer ``feed_forward.expert_bias``
(E,), stacked experts ``feed_forward.experts.gate_up_proj`` (E, 2I, H) rows [gate; up],
``down_proj`` (E, H, I). The first ``num_dense_layers`` layers hold a dense ``Lfm2MoeMLP``
(w1/w3/w2, no router: not MoE). No shared expert. On disk: ``feed_forward.gate.weight``,
``feed_forward.expert_bias``, ``feed_forward.experts.{e}.w1|w3|w2.weight`` (gate | up | down).

Not in the view: ``routed_scaling_factor`` and the 1e-6 of the renormalisation (the recorded
weights already include both).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Separate
from moescope.models.parts import param, stacked
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    gate = block.gate
    bias = getattr(block, "expert_bias", None) if block.use_expert_bias else None
    return dict(family="lfm2_moe", num_experts=gate.weight.shape[0], top_k=int(gate.top_k), scoring="sigmoid",
                router_weight=gate.weight.detach(), selection_bias=param(bias),
                expert=stacked(block.experts.gate_up_proj, block.experts.down_proj, where=name))


W13 = Separate(gate="feed_forward.experts.{e}.w1.weight", up="feed_forward.experts.{e}.w3.weight",
               down="feed_forward.experts.{e}.w2.weight")

FAMILY = Family(
    name="lfm2_moe", title="LFM2-MoE", model_types=("lfm2_moe",), blocks=("Lfm2MoeSparseMoeBlock",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "feed_forward.gate.weight", W13, selection_bias="feed_forward.expert_bias",
                  scoring="sigmoid"),
)
