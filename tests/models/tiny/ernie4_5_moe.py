"""ERNIE-4.5-MoE: a dense first layer (``moe_layer_start_index=1``), 2 shared experts, a non-zero
selection bias added to the softmax probabilities."""

import torch

from ._common import COMMON, E, I


def build():
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    cfg = Ernie4_5_MoeConfig(**COMMON, intermediate_size=40, moe_intermediate_size=I, moe_num_experts=E, moe_k=3,
                             moe_num_shared_experts=2, moe_layer_start_index=1)
    return Ernie4_5_MoeForCausalLM(cfg)


def randomize(model, generator: torch.Generator) -> None:
    """A selection bias of the size of the probabilities (1/E), so the choices are not their top-k."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("e_score_correction_bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
