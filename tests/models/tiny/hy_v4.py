"""HY-V4 (Hunyuan 4): DeepSeek-V3 routing (a non-zero selection bias, 4 groups of which 2 are kept, a
routed scaling factor, one shared expert) inside hyper-connections (4 residual streams), a dense
first layer."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import HYV4Config, HYV4ForCausalLM

    cfg = HYV4Config(**COMMON, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                     num_experts_per_tok=3, n_shared_experts=1, mlp_layer_types=["dense", "sparse"], n_group=4,
                     topk_group=2, routed_scaling_factor=1.8)
    return HYV4ForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.25)
