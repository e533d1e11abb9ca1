"""Flint: sigmoid top-k without a selection bias, the k scores renormalised, and a shared
expert of its own width (40 ≠ routed width 24), added without a gate; a dense first layer
(``mlp_only_layers``)."""

from ._common import COMMON, E, I


def build():
    from transformers import FlintConfig, FlintForCausalLM

    cfg = FlintConfig(**COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I, num_experts=E,
                      num_experts_per_tok=3, shared_expert_intermediate_size=40, mlp_only_layers=[0], sliding_window=8,
                      layer_types=["full_attention", "sliding_attention"])
    return FlintForCausalLM(cfg)
