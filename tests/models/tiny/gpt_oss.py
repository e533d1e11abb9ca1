"""GPT-OSS: biased router, top-4 of 8, clamped SwiGLU experts whose weights are big enough to hit
the ±limit clamp."""

import torch

from ._common import COMMON, E, I


def build():
    from transformers import GptOssConfig, GptOssForCausalLM

    # max_position_embeddings at GPT-OSS's own 131072, or its YaRN factor check complains
    cfg = GptOssConfig(**{**COMMON, "max_position_embeddings": 131072}, head_dim=8, intermediate_size=I,
                       num_local_experts=E, num_experts_per_tok=4, sliding_window=8)
    return GptOssForCausalLM(cfg)


def randomize(model, generator: torch.Generator) -> None:
    """gate_up_proj × 8, so that the clamp at ±swiglu_limit is hit."""
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "GptOssExperts":
                m.gate_up_proj.mul_(8.0)
