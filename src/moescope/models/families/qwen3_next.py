"""Qwen3-Next (``Qwen3NextSparseMoeBlock``): Qwen2-MoE's block under hybrid linear/full attention.

Routing (``Qwen3NextTopKRouter``): softmax over the E logits (float32), top-k, the k
probabilities renormalised when ``norm_topk_prob``. One shared expert is always added, scaled
per token by ``sigmoid(shared_expert_gate(x))`` (a (1, H) Linear). Layers in
``mlp_only_layers`` (or off the ``decoder_sparse_step`` grid) are a dense ``Qwen3NextMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``),
stacked ``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I),
``block.shared_expert`` (gate/up/down_proj) and ``block.shared_expert_gate``. On disk (hub
layout): ``mlp.gate.weight``, ``mlp.experts.{e}.{gate,up,down}_proj.weight``,
``mlp.shared_expert.{gate,up,down}_proj.weight``, ``mlp.shared_expert_gate.weight`` (1, H).

Not in the view: the shared expert's sigmoid gate (as for Qwen2-MoE; the layout names it as
``shared_gate``); reproducing the block's output needs ``block.shared_expert_gate``.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="qwen3_next", title="Qwen3-Next", model_types=("qwen3_next",), blocks=("Qwen3NextSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("qwen3_next", block.gate, block.experts, name,
                                                    shared=(mlp(block.shared_expert),)),
    hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_expert", ""),),
                  shared_gate="mlp.shared_expert_gate.weight"),
)
