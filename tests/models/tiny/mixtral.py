"""Mixtral: softmax top-2 of 8, the two weights renormalised."""

from ._common import COMMON, E, I


def build():
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**COMMON, intermediate_size=I, num_local_experts=E, num_experts_per_tok=2))
