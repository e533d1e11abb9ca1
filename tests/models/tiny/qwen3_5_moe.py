"""Qwen3.5-MoE (text model, ``qwen3_5_moe_text``): a linear-attention and a full-attention layer,
both MoE, with a gated shared expert (shared width 40 ≠ routed width 24)."""

from ._common import COMMON, E, I


def build():
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    cfg = Qwen3_5MoeTextConfig(**COMMON, head_dim=8, moe_intermediate_size=I, shared_expert_intermediate_size=40,
                               num_experts=E, num_experts_per_tok=3, linear_key_head_dim=8, linear_value_head_dim=8,
                               linear_num_key_heads=2, linear_num_value_heads=4,
                               layer_types=["linear_attention", "full_attention"])
    return Qwen3_5MoeForCausalLM(cfg)
