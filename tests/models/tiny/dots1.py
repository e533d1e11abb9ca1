"""dots.llm1: a dense first layer, 2 shared experts, 4 groups (2 kept), weights not renormalised
(``norm_topk_prob=False``, dots' default), a non-zero selection bias."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import Dots1Config, Dots1ForCausalLM

    cfg = Dots1Config(**COMMON, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                      num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1, n_group=4, topk_group=2,
                      routed_scaling_factor=2.5, norm_topk_prob=False)
    return Dots1ForCausalLM(cfg)


# A selection bias of a quarter of the sigmoid scores' range, so the choices are not the top-k of the scores.
randomize = selection_bias(0.25)
