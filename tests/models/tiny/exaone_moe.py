"""EXAONE-MoE: DeepSeek-V3 routing — a non-zero selection bias, 4 expert groups of which 2 are kept,
a routed scaling factor, one shared expert — and a dense first layer."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import ExaoneMoeConfig, ExaoneMoeForCausalLM

    cfg = ExaoneMoeConfig(**COMMON, intermediate_size=40, moe_intermediate_size=I, num_experts=E,
                          num_experts_per_tok=3, num_shared_experts=1, first_k_dense_replace=1, n_group=4,
                          topk_group=2, routed_scaling_factor=2.5, sliding_window=8)
    return ExaoneMoeForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.5)
