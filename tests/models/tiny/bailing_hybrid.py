"""Bailing-Hybrid (Ling 2.5): DeepSeek-V3 routing (a non-zero selection bias, 4 groups of which 2 are
kept, a routed scaling factor, one shared expert) under a linear-attention then a full-attention
layer; the first layer's MLP is dense."""

from ._common import MLA, E, I, selection_bias


def build():
    from transformers import BailingHybridConfig, BailingHybridForCausalLM

    cfg = BailingHybridConfig(**MLA, head_dim=8, intermediate_size=40, moe_intermediate_size=I, num_local_experts=E,
                              num_experts_per_tok=3, n_shared_experts=1, n_group=4, topk_group=2,
                              routed_scaling_factor=1.8, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4,
                              qk_nope_head_dim=8, v_head_dim=8, layer_types=["linear_attention", "full_attention"],
                              mlp_layer_types=["dense", "sparse"])
    return BailingHybridForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.25)
