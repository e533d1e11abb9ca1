"""Lara-Mini (``LaraMiniSparseMoeBlock``): softmax top-k plus one ungated shared expert, every layer.

Routing (``LaraMiniTopKRouter``): softmax of ``x Wᵀ`` computed in float32, top-k, the k
probabilities divided by their sum when ``norm_topk_prob``. Unlike Qwen3-Next (whose hybrid
linear/full attention it shares) the shared MLP is added in full, without a sigmoid gate, and
every layer's MLP is MoE.

Live: ``block.gate`` (``weight`` (E, H), ``top_k``; returns ``(logits, weights, indices)``),
stacked ``block.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_expert``
(gate/up/down_proj). On disk (what ``save_pretrained`` writes): ``mlp.gate.weight``, the experts
*stacked* as on the live model, ``mlp.experts.gate_up_proj`` (E, 2I, H) rows [gate; up] and
``mlp.experts.down_proj`` (E, H, I), and ``mlp.shared_expert.{gate,up,down}_proj.weight``.

The view carries everything the block computes.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Stacked, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="lara_mini", title="Lara-Mini", model_types=("lara_mini",), blocks=("LaraMiniSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("lara_mini", block.gate, block.experts, name,
                                                    shared=(mlp(block.shared_expert),)),
    hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", Stacked("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
                  shared=(glu("mlp.shared_expert", ""),)),
)
