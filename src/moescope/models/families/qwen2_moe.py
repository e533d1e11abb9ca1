"""Qwen2-MoE (``Qwen2MoeSparseMoeBlock``): softmax top-k (renormalised when ``norm_topk_prob``)
plus one shared expert whose output is scaled by sigmoid(``shared_expert_gate`` · x).

Live: ``block.gate`` (``Qwen2MoeTopKRouter``, returns ``(logits, weights, indices)``; the recorder
hooks it), stacked experts ``gate_up_proj`` (E, 2I, H) rows [gate; up] and ``down_proj`` (E, H, I),
the shared MLP ``block.shared_expert`` (``gate_proj``/``up_proj``/``down_proj``) and its gate
``block.shared_expert_gate`` (1, H). The view carries the shared expert but not its sigmoid gate
(reproducing the block's output needs it; recording does not).

On disk (prefix ``model.layers.{i}``): router ``mlp.gate.weight``, experts
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``, shared ``mlp.shared_expert.*.weight`` and
its gate ``mlp.shared_expert_gate.weight`` (1, H).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple
from moescope.moe.lift import lift_qwen2_moe

FAMILY = Family(
    name="qwen2_moe", title="Qwen2-MoE", model_types=("qwen2_moe",), blocks=("Qwen2MoeSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("qwen2_moe", block.gate, block.experts, name,
                                                    shared=(mlp(block.shared_expert),)),
    hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_expert", ""),),
                  shared_gate="mlp.shared_expert_gate.weight"),
    from_hf=lift_qwen2_moe,
)
