"""PhiMoE: sparsemixer, always two experts of 8."""

from ._common import COMMON, E, I


def build():
    from transformers import PhimoeConfig, PhimoeForCausalLM

    return PhimoeForCausalLM(PhimoeConfig(**COMMON, intermediate_size=I, num_local_experts=E, num_experts_per_tok=2))
