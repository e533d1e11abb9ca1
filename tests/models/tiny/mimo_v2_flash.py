"""MiMo-V2-Flash: DeepSeek-V3 routing without a shared expert — a non-zero selection bias, 4 expert
groups of which 2 are kept, a routed scaling factor; the first layer's MLP dense."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import MiMoV2FlashConfig, MiMoV2FlashForCausalLM

    cfg = MiMoV2FlashConfig(**COMMON, head_dim=8, v_head_dim=8, intermediate_size=40, moe_intermediate_size=I,
                            n_routed_experts=E, num_experts_per_tok=3, n_group=4, topk_group=2,
                            routed_scaling_factor=2.5, sliding_window=8, mlp_layer_types=["dense", "sparse"])
    return MiMoV2FlashForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.5)
