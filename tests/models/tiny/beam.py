"""Beam: sigmoid routing with a non-zero selection bias, 4 groups of which 2 are kept, and a routed
scaling factor applied to the block's output (not to the weights); a dense first layer."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import BeamConfig, BeamForCausalLM

    cfg = BeamConfig(**COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I, num_experts=E,
                     num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=1.8, sliding_window=8,
                     layer_types=["sliding_attention", "full_attention"], mlp_layer_types=["dense", "sparse"])
    return BeamForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.25)
