"""DeepSeek-V3.2: MLA + lightning indexer, a dense first layer, 2 shared experts, 4 groups (2 kept),
a non-zero selection bias."""

from ._common import MLA, E, I, selection_bias


def build():
    from transformers import DeepseekV32Config, DeepseekV32ForCausalLM

    cfg = DeepseekV32Config(**MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                            num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1, n_group=4,
                            topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True, kv_lora_rank=16,
                            q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, index_topk=4,
                            index_head_dim=8, index_n_heads=2)
    return DeepseekV32ForCausalLM(cfg)


# A selection bias of a quarter of the sigmoid scores' range, so the choices are not the top-k of the scores.
randomize = selection_bias(0.25)
