"""MiniMax-M2: sigmoid scores with a non-zero selection bias on the block, every layer MoE."""

import torch

from ._common import COMMON, E, I


def build():
    from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM

    cfg = MiniMaxM2Config(**COMMON, head_dim=8, intermediate_size=I, num_local_experts=E, num_experts_per_tok=3)
    return MiniMaxM2ForCausalLM(cfg)


def randomize(model, generator):
    """The selection bias is a zero buffer at init: make it large enough to change choices."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.5 * torch.randn(b.shape, generator=generator))
