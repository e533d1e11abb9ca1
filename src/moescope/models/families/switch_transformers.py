"""Switch Transformers (``SwitchTransformersSparseMLP``): top-1 softmax routing with a fixed expert
capacity; a token routed to a full expert is dropped (no expert output; the residual carries it).

Live: ``block.router`` (``SwitchTransformersTop1Router``, ``classifier`` Linear (E, H) with an
optional bias; returns ``(dispatch one-hot (B, S, E), probs (B, S, 1), logits)``, the capacity-masked
one-hot: a token with no 1 was dropped and is recorded as index -1, weight 0) and experts as a
ModuleDict ``expert_{e}`` of ``wi`` (I, H) and ``wo`` (H, I) Linear layers: ReLU, no gate.

Loaded as ``SwitchTransformersEncoderModel`` (the decoder's weights are skipped): the encoder reads
the text you give it, so its routing is a property of that text; the decoder's routing would also
depend on a target sequence, which routing analysis of a corpus does not have.

On disk: prefixes ``encoder.block.{i}.layer.1`` and ``decoder.block.{i}.layer.2`` (dense blocks have
no router key); router ``mlp.router.classifier.weight`` (+ ``.bias`` with ``router_bias``), experts
``mlp.experts.expert_{e}.wi|wo.weight`` (up | down). The config has no top-k key: k = 1.
"""

from torch import nn

from moescope.models.family import Family, Parts
from moescope.models.layout import Layout, Separate
from moescope.models.parts import check_expert, param
from moescope.models.readers import read_switch
from moescope.models.view import ExpertWeights
from moescope.moe.lift import lift_switch


def adapt(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    router, experts = block.router, block.experts
    num_experts = int(router.num_experts)

    def expert(e: int) -> ExpertWeights:
        check_expert(e, num_experts)
        mlp = experts[f"expert_{e}"]
        return ExpertWeights(up=mlp.wi.weight.detach(), down=mlp.wo.weight.detach())   # (I, H), (H, I)

    return dict(family="switch_transformers", num_experts=num_experts, top_k=1, scoring="softmax",
                router_weight=router.classifier.weight.detach(), router_bias=param(router.classifier.bias),
                expert=expert)


FAMILY = Family(
    name="switch_transformers", title="Switch Transformers", model_types=("switch_transformers",),
    blocks=("SwitchTransformersSparseMLP",), adapter=adapt, hook="router", reader=read_switch,
    layout=Layout((r"encoder\.block\.(\d+)\.layer\.1", r"decoder\.block\.(\d+)\.layer\.2"),
                  "mlp.router.classifier.weight",
                  Separate(up="mlp.experts.expert_{e}.wi.weight", down="mlp.experts.expert_{e}.wo.weight"),
                  router_bias="mlp.router.classifier.bias", top_k=()),
    from_hf=lift_switch, auto_class="SwitchTransformersEncoderModel",
)
