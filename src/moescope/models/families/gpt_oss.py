"""GPT-OSS (``GptOssMLP``): a biased linear router, top-k of the logits, softmax over the k chosen;
experts are a clamped SwiGLU with biases, (u + 1) · g · sigmoid(α g), g ≤ limit, |u| ≤ limit.

Live: ``block.router`` (``GptOssTopKRouter``, ``weight`` (E, H) and ``bias`` (E,); returns
``(logits, weights, indices)``, hooked by the recorder; the recorded scores are the softmax of the
*biased* logits), stacked experts stored transposed with gate and up *interleaved* along the 2I
axis: ``gate_up_proj`` (E, H, 2I) gate in even, up in odd columns, ``down_proj`` (E, I, H), plus
``gate_up_proj_bias`` (E, 2I) and ``down_proj_bias`` (E, H). The view carries the router bias but
not the expert biases nor the clamp (reproducing the output needs them; recording does not).

On disk (prefix ``model.layers.{i}``): router ``mlp.router.weight`` and ``mlp.router.bias``,
experts ``mlp.experts.gate_up_proj`` (E, H, 2I) interleaved and ``mlp.experts.down_proj`` (E, I, H),
with their ``*_bias``. The hub's files are MXFP4 ``*_blocks``/``*_scales``: refused as quantised.
"""

from torch import nn

from moescope.models.family import Family, Parts
from moescope.models.layout import DECODER, Layout, Stacked
from moescope.models.parts import param, stacked
from moescope.models.readers import read_triple
from moescope.moe.lift import lift_gpt_oss


def adapt(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    ex = block.experts
    return dict(family="gpt_oss", num_experts=block.router.weight.shape[0], top_k=int(block.router.top_k),
                scoring="softmax", router_weight=block.router.weight.detach(), router_bias=param(block.router.bias),
                expert=stacked(ex.gate_up_proj, ex.down_proj, transposed=True, interleaved=True, where=name))


FAMILY = Family(
    name="gpt_oss", title="GPT-OSS", model_types=("gpt_oss",), blocks=("GptOssMLP",),
    adapter=adapt, hook="router", reader=read_triple,
    layout=Layout(DECODER, "mlp.router.weight",
                  Stacked("mlp.experts.gate_up_proj", "mlp.experts.down_proj", hidden_first=True, interleaved=True),
                  router_bias="mlp.router.bias"),
    from_hf=lift_gpt_oss,
)
