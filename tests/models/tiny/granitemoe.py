"""GraniteMoE: top-2 of 8, softmax over the two chosen logits."""

from ._common import COMMON, E, I


def build():
    from transformers import GraniteMoeConfig, GraniteMoeForCausalLM

    return GraniteMoeForCausalLM(GraniteMoeConfig(**COMMON, intermediate_size=I, num_local_experts=E,
                                                  num_experts_per_tok=2))
