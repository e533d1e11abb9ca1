"""Mellum: Qwen3-MoE routing (softmax top-k, renormalised); the first layer's MLP dense."""

from ._common import COMMON, E, I


def build():
    from transformers import MellumConfig, MellumForCausalLM

    cfg = MellumConfig(**COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I, num_experts=E,
                       num_experts_per_tok=3, sliding_window=8, mlp_layer_types=["dense", "sparse"])
    return MellumForCausalLM(cfg)
