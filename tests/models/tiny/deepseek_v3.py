"""DeepSeek-V3: MLA, a dense first layer that must not be taken for MoE, 2 shared experts,
4 groups (2 kept), top-3 × 2.5, and a non-zero selection bias."""

from ._common import MLA, E, I, selection_bias


def build():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = DeepseekV3Config(**MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                           num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1, n_group=4,
                           topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True, kv_lora_rank=16,
                           q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8)
    return DeepseekV3ForCausalLM(cfg)


# A non-zero selection bias, so the choices are not the top-k of the scores.
randomize = selection_bias(0.5)
