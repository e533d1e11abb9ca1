"""Hunyuan-MoE v1 (``HunYuanMoEV1Moe``): softmax over E experts, top-k (``moe_topk``), the k
weights renormalised. ``gate.wg`` is created in float32 and, while it is float32, the hidden
states are cast up to it (a model loaded or cast to another dtype casts ``wg`` too).

Live: ``mlp.gate`` (``HunYuanMoEV1Gate``, returns ``(logits, weights, indices)``) whose linear
is ``mlp.gate.wg`` (E, H); stacked experts ``mlp.experts.gate_up_proj`` (E, 2I, H) rows
[gate; up], ``down_proj`` (E, H, I); one always-on shared MLP ``mlp.shared_mlp``
(gate/up/down_proj, width ``intermediate_size`` like the experts) added inside the block.
Every decoder layer is MoE. On disk: ``mlp.gate.wg.weight``,
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``, ``mlp.shared_mlp.*.weight``.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, stacked
from moescope.models.readers import read_triple


def _adapter(block, parent, name):
    gate = block.gate
    return dict(family="hunyuan_v1_moe", num_experts=gate.wg.weight.shape[0], top_k=int(gate.top_k),
                scoring="softmax", router_weight=gate.wg.weight.detach(),
                expert=stacked(block.experts.gate_up_proj, block.experts.down_proj, where=name),
                shared=(mlp(block.shared_mlp),))


FAMILY = Family(
    name="hunyuan_v1_moe", title="Hunyuan-MoE v1", model_types=("hunyuan_v1_moe",), blocks=("HunYuanMoEV1Moe",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.wg.weight", glu("mlp"), shared=(glu("mlp.shared_mlp", ""),),
                  top_k=("moe_topk", "num_experts_per_tok")),
)
