"""ERNIE-4.5-MoE (``Ernie4_5_MoeSparseMoeBlock``): softmax top-k chosen with a selection bias.

Routing (transformers 5.24 ``Ernie4_5_MoeTopKRouter``): p = softmax(x·Wᵀ) in float32; the k
experts are chosen on p + b, b = ``moe_statics.e_score_correction_bias`` (the selection bias,
added to the *probabilities*, not to logits); the combine weights are the unbiased p of the
k chosen divided by max(their sum, ``moe_norm_min``). No groups. An optional always-on shared
MLP (``moe_num_shared_experts`` experts fused into one of that many times the expert width)
is added to the routed sum.

Live: ``block.gate`` (returns ``(logits, weights, indices)``) holding ``weight`` (E, H) and
``moe_statics.e_score_correction_bias`` (1, E); stacked ``block.experts`` ``gate_up_proj``
(E, 2I, H) / ``down_proj`` (E, H, I); ``block.shared_experts`` or None. Layers outside
``moe_layer_start_index``..``moe_layer_end_index`` or off ``moe_layer_interval`` hold a dense
``Ernie4_5_MoeMLP``.

On disk: ``model.layers.{i}.mlp.gate.weight``, ``mlp.moe_statics.e_score_correction_bias``
(1, E) — *not* under ``gate`` as in the live module —, ``mlp.experts.{e}.*.weight``,
``mlp.shared_experts.*.weight``; k is ``moe_k`` in ``config.json``.

Not in the view: with ``use_bias`` the shared MLP's Linear biases (the routed experts have none).
"""

from torch import nn

from moescope.models.family import Family, Parts
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple


def _adapter(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    gate = block.gate
    shared = () if block.shared_experts is None else (mlp(block.shared_experts),)
    return topk_family("ernie4_5_moe", gate, block.experts, name, shared=shared,
                       selection_bias=gate.moe_statics.e_score_correction_bias.detach().reshape(-1))


FAMILY = Family(
    name="ernie4_5_moe", title="ERNIE-4.5-MoE", model_types=("ernie4_5_moe",),
    blocks=("Ernie4_5_MoeSparseMoeBlock",), adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_experts", ""),),
                  selection_bias="mlp.moe_statics.e_score_correction_bias", top_k=("moe_k", "num_experts_per_tok")),
)
