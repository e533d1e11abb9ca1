"""Gemma 4 (``Gemma4TextDecoderLayer`` with ``enable_moe_block``): a dense MLP and routed experts side by side.

Routing (``Gemma4TextRouter``): the router reads the layer's residual stream ``x`` through its own
scale-free RMSNorm, ``z = rmsnorm(x) · scale · H^-1/2``; ``p = softmax(z Wᵀ)`` over the E experts
in float32; the k experts are the top-k of ``p``; their weights are the k probabilities
renormalised to sum to 1, each then multiplied by ``per_expert_scale[e]``. No shared expert: the
decoder layer adds ``post_feedforward_layernorm_1(mlp(·))`` of its dense MLP and
``post_feedforward_layernorm_2(Σ w·expert(pre_feedforward_layernorm_2(x)))``. The experts use
``hidden_activation`` (GELU-tanh by default), not SiLU.

The MoE "block" is the decoder layer itself (router and experts are attributes of the layer). A
Gemma 4 model without ``enable_moe_block`` (the dense variants share the model type) has no
``router``: the adapter refuses it with a ValueError.

Live: ``layer.router`` (``proj`` Linear (E, H), ``scale`` (H,), ``per_expert_scale`` (E,);
returns ``(probabilities, weights, indices)`` — probabilities, not logits), stacked
``layer.experts.gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I). On disk (what
``save_pretrained`` writes): ``router.proj.weight``, ``router.scale``, ``router.per_expert_scale``,
stacked ``experts.gate_up_proj`` / ``experts.down_proj``, under ``model.layers.{i}``.

Not in the view: the router's norm, ``scale`` and ``H^-1/2`` (``router_weight`` is ``proj.weight``
and applies to ``z``, not to the layer's input), ``per_expert_scale`` (inside the recorded
weights only), the experts' input norm ``pre_feedforward_layernorm_2``, their output norm, and
the activation.
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Stacked
from moescope.models.parts import stacked
from moescope.models.view import MoELayerView


def _adapter(block, parent, name):
    if not getattr(block, "enable_moe_block", False):
        raise ValueError(f"{name}: this Gemma 4 decoder layer has no MoE block (enable_moe_block is False)")
    router = block.router
    return dict(family="gemma4_text", num_experts=router.proj.weight.shape[0],
                top_k=int(router.config.top_k_experts), scoring="softmax", router_weight=router.proj.weight.detach(),
                expert=stacked(block.experts.gate_up_proj, block.experts.down_proj, where=name))


def _read(output, view: MoELayerView):
    """``(probabilities (T, E), weights (T, k), indices (T, k))``: the scores are already a softmax."""
    probs, weights, indices = output[0], output[1], output[2]
    k = indices.shape[-1]
    return indices.reshape(-1, k), weights.reshape(-1, k), probs.reshape(-1, probs.shape[-1]).float()


FAMILY = Family(
    name="gemma4_text", title="Gemma 4", model_types=("gemma4_text",), blocks=("Gemma4TextDecoderLayer",),
    adapter=_adapter, hook="router", reader=_read,
    layout=Layout(DECODER, "router.proj.weight", Stacked("experts.gate_up_proj", "experts.down_proj"),
                  top_k=("top_k_experts",)),
)
