"""Qwen2-MoE: top-3 of 8 *not* renormalised, and a sigmoid-gated shared expert of width 40."""

from ._common import COMMON, E, I


def build():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return Qwen2MoeForCausalLM(Qwen2MoeConfig(**COMMON, intermediate_size=40, moe_intermediate_size=I,
                                              shared_expert_intermediate_size=40, num_experts=E,
                                              num_experts_per_tok=3, norm_topk_prob=False))
