"""Qwen4-Exp (``Qwen4ExpTextSparseMoeBlock``): Qwen3-Next's MoE block in every layer.

Routing (``Qwen4ExpTextTopKRouter``): softmax over the E logits (float32), top-k, the k
probabilities renormalised when ``norm_topk_prob``. One shared expert is always added, scaled
per token by ``sigmoid(shared_expert_gate(x))`` (a (1, H) Linear). Every layer's MLP is MoE
(the layers differ in attention — Gated DeltaNet or full attention with a sparse indexer — and
are joined by hyper-connections, none of which touch the block).

Model types: ``qwen4_exp`` is the vision-language checkpoint (``text_config`` nested; the
language model's layers under ``model.language_model.layers.{i}``; ``AutoModelForCausalLM``
loads its text part as ``Qwen4ExpForCausalLM``, dropping the vision tower), ``qwen4_exp_text``
the text-only one (``model.layers.{i}``).

Live: ``block.gate`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``),
stacked ``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I),
``block.shared_expert`` (gate/up/down_proj) and ``block.shared_expert_gate``. On disk (what
``save_pretrained`` writes, below either layer prefix): ``mlp.gate.weight``,
``mlp.experts.{e}.{gate,up,down}_proj.weight``, ``mlp.shared_expert.{gate,up,down}_proj.weight``,
``mlp.shared_expert_gate.weight`` (1, H).

Not in the view: the shared expert's sigmoid gate (as for Qwen2-MoE; the layout names it as
``shared_gate``); reproducing the block's output needs ``block.shared_expert_gate``.
"""

from moescope.models.family import Family
from moescope.models.layout import Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="qwen4_exp", title="Qwen4-Exp", model_types=("qwen4_exp", "qwen4_exp_text"),
    blocks=("Qwen4ExpTextSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("qwen4_exp", block.gate, block.experts, name,
                                                    shared=(mlp(block.shared_expert),)),
    hook="gate", reader=read_triple,
    layout=Layout((r"(?:model\.language_model|model)\.layers\.(\d+)",), "mlp.gate.weight", glu("mlp"),
                  shared=(glu("mlp.shared_expert", ""),), shared_gate="mlp.shared_expert_gate.weight"),
)
