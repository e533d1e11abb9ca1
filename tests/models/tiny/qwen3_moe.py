"""Qwen3-MoE: top-2 of 8, renormalised."""

from ._common import COMMON, E, I


def build():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I,
                                              num_experts=E, num_experts_per_tok=2, norm_topk_prob=True))
