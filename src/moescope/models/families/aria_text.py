"""Aria (``AriaTextMoELayer``): top-k on the logits, the softmax taken over the k chosen logits.

Routing (``AriaTextTopKRouter``): the k largest logits ``x Wᵀ`` are chosen; their weights are the
softmax over those k logits (= the softmax over E renormalised over the k). The
``moe_num_shared_experts`` shared experts are one MLP of that many times ``intermediate_size``,
added unweighted. Every decoder layer is MoE.

Model types: ``aria_text`` (the language model alone). ``aria`` (the vision-language checkpoint)
is not loadable with ``AutoModelForCausalLM`` and is not claimed here.

Live: ``block.router`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``),
stacked experts stored input-major, ``block.experts.gate_up_proj`` (E, H, 2I) columns
[gate | up] and ``down_proj`` (E, I, H), and ``block.shared_experts`` (gate/up/down_proj).
On disk (what ``save_pretrained`` writes, the hub layout): ``mlp.router.weight``,
``mlp.experts.fc1.weight`` (E, H, 2I), ``mlp.experts.fc2.weight`` (E, I, H),
``mlp.shared_experts.{gate,up,down}_proj.weight``.

The routed experts are always SiLU-gated; the shared MLP uses ``config.hidden_act`` (SiLU by
default), which the view does not record. Otherwise the view carries everything the block computes.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Stacked, glu
from moescope.models.parts import mlp, stacked
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    router = block.router
    return dict(family="aria_text", num_experts=router.weight.shape[0], top_k=int(router.top_k), scoring="softmax",
                router_weight=router.weight.detach(),
                expert=stacked(block.experts.gate_up_proj, block.experts.down_proj, transposed=True, where=name),
                shared=(mlp(block.shared_experts),))


FAMILY = Family(
    name="aria_text", title="Aria", model_types=("aria_text",), blocks=("AriaTextMoELayer",),
    adapter=_adapter, hook="router", reader=read_triple,
    layout=Layout(DECODER, "mlp.router.weight",
                  Stacked("mlp.experts.fc1.weight", "mlp.experts.fc2.weight", hidden_first=True),
                  shared=(glu("mlp.shared_experts", ""),), top_k=("moe_topk",)),
)
