"""A.X-K2: DeepSeek-V3-style sigmoid routing with a non-zero selection bias and groups (4 groups, 2
kept; masked groups are filled with 0, not -inf), a routed scaling factor, a shared expert, MLA
attention with an indexer, and a dense first layer."""

from ._common import MLA, E, I, selection_bias


def build():
    from transformers import AXK2Config, AXK2ForCausalLM

    cfg = AXK2Config(**MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=3,
                     n_shared_experts=1, mlp_layer_types=["dense", "sparse"], n_group=4, topk_group=2,
                     routed_scaling_factor=1.8, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4,
                     qk_nope_head_dim=8, v_head_dim=8, head_dim=4, index_topk=4, index_head_dim=8, index_n_heads=2)
    return AXK2ForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.25)
