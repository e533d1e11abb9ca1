"""Aria (text model, ``aria_text``): softmax over the top-k logits, two shared experts fused into one
MLP of twice the expert width, every layer MoE."""

from ._common import COMMON, E, I


def build():
    from transformers import AriaTextConfig, AriaTextForCausalLM

    cfg = AriaTextConfig(**COMMON, head_dim=8, intermediate_size=I, moe_num_experts=E, moe_topk=3,
                         moe_num_shared_experts=2)
    return AriaTextForCausalLM(cfg)
