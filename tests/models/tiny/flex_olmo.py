"""FlexOlmo: OLMoE-style softmax top-k, the k weights not renormalised (norm_topk_prob=False)."""

from ._common import COMMON, E, I


def build():
    from transformers import FlexOlmoConfig, FlexOlmoForCausalLM

    cfg = FlexOlmoConfig(**COMMON, intermediate_size=I, num_experts=E, num_experts_per_tok=3, norm_topk_prob=False)
    return FlexOlmoForCausalLM(cfg)
