"""Llama 4 (text): sigmoid top-2 of 8 weighting the experts' input, and a shared expert of width 40."""

from ._common import COMMON, E, I


def build():
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    cfg = Llama4TextConfig(**COMMON, head_dim=8, intermediate_size=I, intermediate_size_mlp=40,
                           num_local_experts=E, num_experts_per_tok=2, attention_chunk_size=64)
    return Llama4ForCausalLM(cfg)
