"""FlexOlmo (``FlexOlmoSparseMoeBlock``): softmax over E experts, top-k; the k weights are
renormalised only with ``norm_topk_prob`` (False by default, as in OLMoE).

Live: ``mlp.gate`` (``FlexOlmoTopKRouter``, returns ``(logits, weights, indices)``) and stacked
experts ``mlp.experts.gate_up_proj`` (E, 2I, H) rows [gate; up], ``down_proj`` (E, H, I). Every
decoder layer is MoE. On disk: ``mlp.gate.weight`` and
``mlp.experts.{e}.gate_proj|up_proj|down_proj.weight``.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="flex_olmo", title="FlexOlmo", model_types=("flex_olmo",), blocks=("FlexOlmoSparseMoeBlock",),
    adapter=lambda block, parent, name: topk_family("flex_olmo", block.gate, block.experts, name),
    hook="gate", reader=read_triple,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp")),
)
