"""DeepSeek-V2 (``DeepseekV2Moe``): softmax scores, top-k × ``routed_scaling_factor``; with
``topk_method="group_limited_greedy"`` only the ``topk_group`` of ``n_group`` expert groups whose
best score is highest are eligible (DeepSeek-V2 paper, arXiv:2405.04434 §2.1.2, device-limited
routing). One always-on shared MLP.

Live: ``block.gate`` (``DeepseekV2TopkRouter``, returns ``(logits, weights, indices)``; the recorder
hooks it), stacked experts ``gate_up_proj`` (E, 2I, H) rows [gate; up], ``down_proj`` (E, H, I), and
``block.shared_experts`` (``gate_proj``/``up_proj``/``down_proj``): DeepSeek's ``n_shared_experts``
shared experts are one fused MLP in both the reference code and transformers, and are described
as one shared expert of that width. The view's groups are (1, 1) unless the router is grouped.
No ``from_hf`` converter (moescope has no group-limited *softmax* router).

On disk (prefix ``model.layers.{i}``; the first ``first_k_dense_replace`` layers are dense, no
router key): router ``mlp.gate.weight``, experts ``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``,
shared ``mlp.shared_experts.*.weight``.
"""

from torch import nn

from moescope.models.family import Family, Parts
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple


def adapt(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    gate = block.gate
    grouped = gate.topk_method == "group_limited_greedy"
    return topk_family("deepseek_v2", gate, block.experts, name, shared=(mlp(block.shared_experts),),
                       n_group=int(gate.num_group) if grouped else 1,
                       topk_group=int(gate.topk_group) if grouped else 1)


FAMILY = Family(
    name="deepseek_v2", title="DeepSeek-V2", model_types=("deepseek_v2",), blocks=("DeepseekV2Moe",),
    adapter=adapt, hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_experts", ""),)),
)
