"""Gemma 4 (text model, ``gemma4_text``) with its MoE block on: every decoder layer runs a dense MLP
*and* routed experts (router with its own RMSNorm and per-expert weight scales), a sliding-window
and a full-attention layer."""

import torch

from ._common import COMMON, E, I


def build():
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    cfg = Gemma4TextConfig(**COMMON, head_dim=8, intermediate_size=40, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"], vocab_size_per_layer_input=300,
                           hidden_size_per_layer_input=8, enable_moe_block=True, num_experts=E, top_k_experts=3,
                           moe_intermediate_size=I)
    return Gemma4ForCausalLM(cfg)


def randomize(model, generator: torch.Generator) -> None:
    """``per_expert_scale`` is ones at init: spread it so that the recorded weights must include it."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("router.per_expert_scale"):
                p.copy_(1.0 + 0.5 * torch.rand(p.shape, generator=generator))
