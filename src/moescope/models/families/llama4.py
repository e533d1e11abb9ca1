"""Llama 4 (``Llama4TextMoe``): sigmoid top-k whose score multiplies each chosen expert's *input*,
expert_e(s_e · x), plus one always-on shared expert.

Live: ``block.router`` (``Llama4Router``, returns ``(scores (T, E), logits)``: the sigmoid of the
chosen logits scattered into -inf, so the chosen experts are the **non-zero** entries — see the
Llama 4 caveat in :mod:`moescope.models.recorder`), stacked experts stored *transposed*:
``gate_up_proj`` (E, H, 2I) columns [gate | up] (halves), ``down_proj`` (E, I, H); the shared MLP
``block.shared_expert`` (``gate_proj``/``up_proj``/``down_proj``). The view does not carry the
input weighting (reproducing the output needs it; recording does not).

On disk: prefix ``model.layers.{i}`` (``llama4_text``) or ``language_model.model.layers.{i}`` /
``model.language_model.layers.{i}`` (the multimodal ``llama4``, whose config nests the text model
under ``text_config``); router ``feed_forward.router.weight`` (sigmoid scoring), experts
``feed_forward.experts.gate_up_proj`` (E, H, 2I) and ``feed_forward.experts.down_proj`` (E, I, H),
shared ``feed_forward.shared_expert.*.weight``. Llama 4 Maverick's interleaved dense layers have no
router key and are skipped.
"""

from torch import nn

from moescope.models.family import Family, Parts
from moescope.models.layout import Layout, Stacked, glu
from moescope.models.parts import mlp, stacked
from moescope.models.readers import llama4_logits, read_llama4
from moescope.moe.lift import lift_llama4

LAYOUT = Layout((r"(?:language_model\.model|model\.language_model|model)\.layers\.(\d+)",),
                "feed_forward.router.weight",
                Stacked("feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj", hidden_first=True),
                shared=(glu("feed_forward.shared_expert", ""),), scoring="sigmoid")


def adapt(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    ex = block.experts
    return dict(family="llama4", num_experts=block.router.weight.shape[0], top_k=int(block.router.top_k),
                scoring="sigmoid", router_weight=block.router.weight.detach(),
                expert=stacked(ex.gate_up_proj, ex.down_proj, transposed=True, where=name),
                shared=(mlp(block.shared_expert),))


FAMILY = Family(
    name="llama4", title="Llama 4 (text)", model_types=("llama4_text", "llama4"), blocks=("Llama4TextMoe",),
    adapter=adapt, hook="router", reader=read_llama4, selection_logits=llama4_logits, layout=LAYOUT,
    from_hf=lift_llama4,
)
