"""GraniteMoE-hybrid: Mamba-2 / attention hybrid; the shared MLP is the MoE block's sibling."""

from ._common import COMMON, E, I


def build():
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    cfg = GraniteMoeHybridConfig(**COMMON, intermediate_size=I, num_local_experts=E, num_experts_per_tok=2,
                                 shared_intermediate_size=40, layer_types=["linear_attention", "attention"],
                                 mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=8,
                                 residual_multiplier=0.5, embedding_multiplier=2.0)
    return GraniteMoeHybridForCausalLM(cfg)
