"""A.X-K1: DeepSeek-V3 routing (a non-zero selection bias, 4 groups of which 2 are kept, a routed
scaling factor, 2 shared experts), MLA attention, a dense first layer, and the block's own
``post_mlp_layernorm`` on its output."""

from ._common import MLA, E, I, selection_bias


def build():
    from transformers import AXK1Config, AXK1ForCausalLM

    cfg = AXK1Config(**MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=3,
                     n_shared_experts=2, mlp_layer_types=["dense", "sparse"], n_group=4, topk_group=2,
                     routed_scaling_factor=1.8, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4,
                     qk_nope_head_dim=8, v_head_dim=8)
    return AXK1ForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.25)
