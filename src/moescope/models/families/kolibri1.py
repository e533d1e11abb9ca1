"""Kolibri-1 (``Kolibri1SparseMoeBlock``): sigmoid weights, experts chosen on biased *logits*.

Routing (``Kolibri1TopKRouter``): logits ``z = x Wᵀ`` (E,) in float32; the k experts are the
top-k of ``z + e_score_correction_bias`` — the selection bias is added to the raw logits, not to
the sigmoid as in DeepSeek-V3; their weights are ``sigmoid(z_i)``, renormalised over the k when
``norm_topk_prob``. One shared MLP is always added, ungated. Every layer is MoE.

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,) buffer, ``top_k``;
returns ``(logits, weights, indices)``), stacked ``block.experts.gate_up_proj`` (E, 2I, H) /
``down_proj`` (E, H, I), ``block.shared_experts`` (gate/up/down_proj). On disk (what
``save_pretrained`` writes): ``mlp.gate.weight``, ``mlp.experts.{e}.{gate,up,down}_proj.weight``,
``mlp.shared_experts.{gate,up,down}_proj.weight`` and the selection bias under another module
name, ``moe.router.expert_bias`` (E,).

Not in the view: that the selection bias applies to the logits rather than to the sigmoid
scores; the family record's ``selection_logits`` says so, and the recorder keeps the logits
(the records' ``selection``), so margins and near-ties are measured on ``z + b``.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple, triple_logits


def _adapter(block, parent, name):
    gate = block.gate
    parts = topk_family("kolibri1", gate, block.experts, name, shared=(mlp(block.shared_experts),),
                        selection_bias=gate.e_score_correction_bias.detach())
    return {**parts, "scoring": "sigmoid"}


FAMILY = Family(
    name="kolibri1", title="Kolibri-1", model_types=("kolibri1",), blocks=("Kolibri1SparseMoeBlock",),
    adapter=_adapter, hook="gate", reader=read_triple, selection_logits=triple_logits,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_experts", ""),),
                  selection_bias="moe.router.expert_bias", scoring="sigmoid"),
)
