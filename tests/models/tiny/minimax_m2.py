"""MiniMax-M2: sigmoid scores with a non-zero selection bias on the block, every layer MoE."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM

    cfg = MiniMaxM2Config(**COMMON, head_dim=8, intermediate_size=I, num_local_experts=E, num_experts_per_tok=3)
    return MiniMaxM2ForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.5)
