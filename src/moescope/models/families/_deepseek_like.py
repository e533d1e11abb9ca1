"""DeepSeek-V3-style routing, shared by the families whose MoE block is a copy of DeepSeek-V3's.

Routing rule (DeepSeek-V3 report, arXiv:2412.19437 §2.1.2, eqs. 12–16; transformers'
``*TopkRouter.forward``): s = sigmoid(x·Wᵀ) in float32; experts are *chosen* on s + b
(b = ``e_score_correction_bias``, the selection bias) among the ``topk_group`` of ``n_group``
expert groups whose two best biased scores sum highest; the combine weights are the *unbiased*
s of the k chosen, divided by their sum when ``norm_topk_prob``, times
``routed_scaling_factor``. The block adds one always-on shared MLP (``shared_experts``,
``n_shared_experts`` experts fused into one of width n_shared·moe_intermediate_size).

Live block (GLM-4-MoE, GLM-4-MoE-Lite, dots.llm1, DeepSeek-V3.2 in transformers 5.x):
``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``num_group``,
``topk_group``; returns ``(logits, weights, indices)``), stacked ``block.experts``
``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), and ``block.shared_experts``
(``gate_proj``/``up_proj``/``down_proj``). ``save_pretrained`` writes the hub layout
:data:`LAYOUT`. The view carries everything but ``routed_scaling_factor`` and
``norm_topk_prob``, which only the combine weights show (the recorder reads those weights).
"""

from __future__ import annotations

from torch import nn

from moescope.models.family import Adapter, Parts
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family


def sigmoid_grouped(family: str, block: nn.Module, name: str) -> Parts:
    """The parts of a DeepSeek-V3-style block: sigmoid scores, selection bias, groups, one shared MLP."""
    gate = block.gate
    parts = topk_family(family, gate, block.experts, name, shared=(mlp(block.shared_experts),),
                        selection_bias=gate.e_score_correction_bias.detach().reshape(-1),
                        n_group=int(gate.num_group), topk_group=int(gate.topk_group))
    return {**parts, "scoring": "sigmoid"}


def adapter(family: str) -> Adapter:
    """The adapter of DeepSeek-V3-style family ``family``."""
    def adapt(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
        return sigmoid_grouped(family, block, name)

    return adapt


def layout(selection_bias: str = "mlp.gate.e_score_correction_bias") -> Layout:
    """The hub layout: ``mlp.gate.weight``, ``mlp.experts.{e}.*``, ``mlp.shared_experts.*`` and
    the selection bias (whose key is the one thing that differs between these families)."""
    return Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_experts", ""),),
                  selection_bias=selection_bias, scoring="sigmoid")


#: Where GLM-4-MoE(-Lite), dots.llm1 and DeepSeek-V3.2 keep their MoE weights (the first
#: ``first_k_dense_replace`` / ``mlp_layer_types == "dense"`` layers are dense: no router key).
LAYOUT = layout()
