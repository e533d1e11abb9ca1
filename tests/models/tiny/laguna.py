"""Laguna: sigmoid of tanh-softcapped logits, a non-zero selection bias, weights renormalised, the
routed sum scaled by ``moe_routed_scaling_factor`` after the experts; one ungated shared expert;
the first layer's MLP dense."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import LagunaConfig, LagunaForCausalLM

    cfg = LagunaConfig(**COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I,
                       shared_expert_intermediate_size=40, num_experts=E, num_experts_per_tok=3, sliding_window=8,
                       mlp_layer_types=["dense", "sparse"], moe_routed_scaling_factor=2.5,
                       moe_router_logit_softcapping=3.0)
    return LagunaForCausalLM(cfg)


# The selection bias is a zero (frozen) parameter at init: make it large enough to change choices.
randomize = selection_bias(0.5)
