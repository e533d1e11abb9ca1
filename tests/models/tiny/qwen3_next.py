"""Qwen3-Next: a linear-attention (Gated DeltaNet) and a full-attention layer; the first layer's MLP
is dense (``mlp_only_layers``); top-k weights not renormalised; a gated shared expert."""

from ._common import COMMON, E, I


def build():
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    cfg = Qwen3NextConfig(**COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I,
                          shared_expert_intermediate_size=40, num_experts=E, num_experts_per_tok=3,
                          norm_topk_prob=False, linear_key_head_dim=8, linear_value_head_dim=8,
                          linear_num_key_heads=2, linear_num_value_heads=4,
                          layer_types=["linear_attention", "full_attention"], mlp_only_layers=[0])
    return Qwen3NextForCausalLM(cfg)
