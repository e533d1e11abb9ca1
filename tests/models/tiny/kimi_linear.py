"""Kimi-Linear: a Kimi-Delta-Attention (linear) and an MLA full-attention layer; the first layer's MLP
dense; DeepSeek-V3 routing — a non-zero selection bias, a routed scaling factor, one shared expert.
No expert groups: config.json names the group count ``num_expert_group``, which the disk reader
does not read yet (it reads ``n_group``), so a grouped tiny model would fail the disk check."""

from ._common import MLA, E, I, selection_bias


def build():
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    cfg = KimiLinearConfig(**MLA, intermediate_size=40, moe_intermediate_size=I, num_local_experts=E,
                           n_shared_experts=1, num_experts_per_tok=3, routed_scaling_factor=2.5,
                           kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4,
                           qk_nope_head_dim=8, v_head_dim=8, linear_head_dim=8, linear_num_heads=4,
                           layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"])
    return KimiLinearForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.5)
