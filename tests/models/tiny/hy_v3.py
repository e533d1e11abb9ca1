"""HY-V3 (Hunyuan 3): sigmoid routing with a non-zero selection bias on the block (not the router),
the k scores renormalised then scaled by ``router_scaling_factor``, one shared expert, a dense
first layer."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import HYV3Config, HYV3ForCausalLM

    cfg = HYV3Config(**COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I, num_experts=E,
                     num_experts_per_tok=3, num_shared_experts=1, router_scaling_factor=1.8,
                     mlp_layer_types=["dense", "sparse"])
    return HYV3ForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.25)
