"""OLMoE: top-2 of 8."""

from ._common import COMMON, E, I


def build():
    from transformers import OlmoeConfig, OlmoeForCausalLM

    return OlmoeForCausalLM(OlmoeConfig(**COMMON, intermediate_size=I, num_experts=E, num_experts_per_tok=2))
