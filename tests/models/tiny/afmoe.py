"""AFMoE: sigmoid scores, a non-zero selection bias (``expert_bias``), route_scale 2.5, two shared
experts (one MLP of twice the width) and a dense first layer that must not be taken for MoE."""

import torch

from ._common import COMMON, E, I


def build():
    from transformers import AfmoeConfig, AfmoeForCausalLM

    cfg = AfmoeConfig(**COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I, num_experts=E,
                      num_experts_per_tok=3, num_shared_experts=2, num_dense_layers=1, route_scale=2.5,
                      global_attn_every_n_layers=2, sliding_window=8)
    return AfmoeForCausalLM(cfg)


def randomize(model, generator):
    """``expert_bias`` is a frozen parameter, zero at init: make it large enough to change choices."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.expert_bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
