"""Kolibri-1: sigmoid weights, experts picked on the raw logits plus a non-zero selection bias,
weights renormalised, one ungated shared expert; a sliding and a full attention layer, both MoE."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import Kolibri1Config, Kolibri1ForCausalLM

    cfg = Kolibri1Config(**COMMON, head_dim=8, moe_intermediate_size=I, shared_expert_intermediate_size=40,
                         num_experts=E, num_experts_per_tok=3, norm_topk_prob=True, sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"])
    return Kolibri1ForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.5)
