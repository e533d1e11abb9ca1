"""GraniteMoE-SWA: softmax over the top-k logits, a shared MLP beside the MoE block (width 40 ≠
expert width 24), sliding-window and full attention layers."""

from ._common import COMMON, E, I


def build():
    from transformers import GraniteMoeSWAConfig, GraniteMoeSWAForCausalLM

    cfg = GraniteMoeSWAConfig(**COMMON, intermediate_size=I, num_local_experts=E, num_experts_per_tok=3,
                              shared_intermediate_size=40, sliding_window=8,
                              layer_types=["full_attention", "sliding_attention"])
    return GraniteMoeSWAForCausalLM(cfg)
