"""LFM2-MoE: sigmoid top-k with a selection bias, renormalised and scaled; the first layer is dense."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import Lfm2MoeConfig, Lfm2MoeForCausalLM

    cfg = Lfm2MoeConfig(**COMMON, intermediate_size=40, moe_intermediate_size=I, num_experts=E,
                        num_experts_per_tok=3, num_dense_layers=1, use_expert_bias=True, norm_topk_prob=True,
                        routed_scaling_factor=2.5, layer_types=["conv", "full_attention"])
    return Lfm2MoeForCausalLM(cfg)


# A non-zero selection bias (a zero one would hide a reader that ignores it).
randomize = selection_bias(0.5, "expert_bias")
