"""Hunyuan-MoE v1: softmax top-k renormalised, a float32 router and an always-on shared MLP."""

from ._common import COMMON, E, I


def build():
    from transformers import HunYuanMoEV1Config, HunYuanMoEV1ForCausalLM

    cfg = HunYuanMoEV1Config(**COMMON, head_dim=8, intermediate_size=I, num_experts=E, moe_topk=2)
    return HunYuanMoEV1ForCausalLM(cfg)
