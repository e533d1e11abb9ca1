"""GraniteMoE-shared: GraniteMoE plus the decoder layer's shared MLP of width 40."""

from ._common import COMMON, E, I


def build():
    from transformers import GraniteMoeSharedConfig, GraniteMoeSharedForCausalLM

    return GraniteMoeSharedForCausalLM(GraniteMoeSharedConfig(**COMMON, intermediate_size=I, num_local_experts=E,
                                                              num_experts_per_tok=2, shared_intermediate_size=40))
