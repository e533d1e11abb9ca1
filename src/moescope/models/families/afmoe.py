"""AFMoE (Arcee, ``AfmoeSparseMoeBlock``): sigmoid scores, top-k picked with a selection bias.

Routing (``AfmoeTokenChoiceRouter``): ``s = sigmoid(x Wᵀ)`` (E,) in float32; the k experts are
the top-k of ``s + expert_bias`` (the bias only selects, as in DeepSeek-V3, no groups); their
weights are ``route_scale · s_i / Σ_chosen s_j`` (always renormalised). Shared experts: one
MLP of width ``num_shared_experts · moe_intermediate_size``, added unweighted. The first
``num_dense_layers`` layers are a dense ``AfmoeMLP``.

Live: ``block.router`` (``.gate`` Linear (E, H), ``.top_k``; returns ``(logits, weights,
indices)``), the selection bias ``block.expert_bias`` (E,) — a parameter of the *block*,
passed to the router as an argument — stacked experts ``block.experts.gate_up_proj``
(E, 2I, H) / ``down_proj`` (E, H, I), and ``block.shared_experts`` (gate/up/down_proj).
On disk (``save_pretrained``, hub layout): ``mlp.router.gate.weight``, ``mlp.expert_bias``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``, ``mlp.shared_experts.{gate,up,down}_proj.weight``.

The view carries everything the block computes (``route_scale`` is inside the recorded weights)
except the decoder layer's ``pre_mlp_layernorm``/``post_mlp_layernorm`` around the block.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, stacked
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    router = block.router
    return dict(family="afmoe", num_experts=router.gate.weight.shape[0], top_k=int(router.top_k), scoring="sigmoid",
                router_weight=router.gate.weight.detach(), selection_bias=block.expert_bias.detach(),
                expert=stacked(block.experts.gate_up_proj, block.experts.down_proj, where=name),
                shared=(mlp(block.shared_experts),))


FAMILY = Family(
    name="afmoe", title="AFMoE", model_types=("afmoe",), blocks=("AfmoeSparseMoeBlock",),
    adapter=_adapter, hook="router", reader=read_triple,
    layout=Layout(DECODER, "mlp.router.gate.weight", glu("mlp"), shared=(glu("mlp.shared_experts", ""),),
                  selection_bias="mlp.expert_bias", scoring="sigmoid"),
)
