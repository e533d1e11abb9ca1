"""Kolibri-1: sigmoid weights, experts picked on the raw logits plus a non-zero selection bias,
weights renormalised, one ungated shared expert; a sliding and a full attention layer, both MoE."""

import torch

from ._common import COMMON, E, I


def build():
    from transformers import Kolibri1Config, Kolibri1ForCausalLM

    cfg = Kolibri1Config(**COMMON, head_dim=8, moe_intermediate_size=I, shared_expert_intermediate_size=40,
                         num_experts=E, num_experts_per_tok=3, norm_topk_prob=True, sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"])
    return Kolibri1ForCausalLM(cfg)


def randomize(model, generator):
    """The selection bias is a zero buffer at init: make it large enough to change choices."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.5 * torch.randn(b.shape, generator=generator))
