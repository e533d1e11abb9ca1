"""DeepSeek-V2: MLA, group-limited greedy routing (4 groups, 2 kept), top-3 × 1.5, one shared expert."""

from ._common import MLA, E, I


def build():
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    cfg = DeepseekV2Config(**MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                           num_experts_per_tok=3, n_shared_experts=1, first_k_dense_replace=0,
                           topk_method="group_limited_greedy", n_group=4, topk_group=2,
                           routed_scaling_factor=1.5, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4,
                           qk_nope_head_dim=8, v_head_dim=8)
    return DeepseekV2ForCausalLM(cfg)
