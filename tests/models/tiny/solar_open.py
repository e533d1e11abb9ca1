"""Solar-Open: DeepSeek-V3 routing — a non-zero selection bias, 4 expert groups of which 2 are kept,
a routed scaling factor, one shared expert — in every layer."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import SolarOpenConfig, SolarOpenForCausalLM

    cfg = SolarOpenConfig(**COMMON, head_dim=8, moe_intermediate_size=I, n_routed_experts=E, n_shared_experts=1,
                          num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=2.5)
    return SolarOpenForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.5)
