"""Qwen3.5-MoE (``Qwen3_5MoeSparseMoeBlock``): Qwen3-Next's block, every layer MoE.

Routing (``Qwen3_5MoeTopKRouter``): softmax over the E logits (float32), top-k, the k
probabilities always renormalised. One shared expert is always added, scaled per token by
``sigmoid(shared_expert_gate(x))`` (a (1, H) Linear). Every decoder layer is MoE.

Model types: ``qwen3_5_moe`` is the vision-language checkpoint (``text_config`` nested; the
language model's layers under ``model.language_model.layers.{i}``; ``AutoModelForCausalLM``
loads its text part as ``Qwen3_5MoeForCausalLM``, dropping the vision tower and the MTP
head), ``qwen3_5_moe_text`` the text-only one (``model.layers.{i}``).

Live: ``block.gate`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``),
stacked ``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I),
``block.shared_expert`` (gate/up/down_proj) and ``block.shared_expert_gate``. On disk (what
``save_pretrained`` writes): ``mlp.gate.weight``, ``mlp.experts.{e}.{gate,up,down}_proj.weight``,
``mlp.shared_expert.{gate,up,down}_proj.weight``, ``mlp.shared_expert_gate.weight`` (1, H).

Not in the view: the shared expert's sigmoid gate (as for Qwen2-MoE; the layout names it as
``shared_gate``); reproducing the block's output needs ``block.shared_expert_gate``.
"""

from moescope.models.family import Family
from moescope.models.layout import Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="qwen3_5_moe", title="Qwen3.5-MoE", model_types=("qwen3_5_moe", "qwen3_5_moe_text"),
    blocks=("Qwen3_5MoeSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("qwen3_5_moe", block.gate, block.experts, name,
                                                    shared=(mlp(block.shared_expert),)),
    hook="gate", reader=read_triple,
    layout=Layout((r"(?:model\.language_model|model)\.layers\.(\d+)",), "mlp.gate.weight", glu("mlp"),
                  shared=(glu("mlp.shared_expert", ""),), shared_gate="mlp.shared_expert_gate.weight"),
)
