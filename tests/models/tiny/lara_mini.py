"""Lara-Mini: a linear-attention (Gated DeltaNet) and a full-attention layer, both MoE; softmax
top-k renormalised; one shared expert added without a gate."""

from ._common import COMMON, E, I


def build():
    from transformers import LaraMiniConfig, LaraMiniForCausalLM

    cfg = LaraMiniConfig(**COMMON, head_dim=8, moe_intermediate_size=I, shared_expert_intermediate_size=40,
                         num_experts=E, num_experts_per_tok=3, linear_key_head_dim=8, linear_value_head_dim=8,
                         linear_num_key_heads=2, linear_num_value_heads=4,
                         layer_types=["linear_attention", "full_attention"])
    return LaraMiniForCausalLM(cfg)
