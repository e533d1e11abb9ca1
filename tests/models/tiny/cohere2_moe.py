"""Cohere2-MoE: a dense first layer (``mlp_layer_types``), then an MoE layer whose shared expert
(twice the expert width) is *averaged* with the routed sum (``shared_expert_combination_strategy``)."""

from ._common import COMMON, E, I


def build():
    from transformers import Cohere2MoeConfig, Cohere2MoeForCausalLM

    cfg = Cohere2MoeConfig(**COMMON, head_dim=8, intermediate_size=I, num_experts=E, num_experts_per_tok=2,
                           num_shared_experts=2, shared_expert_combination_strategy="average",
                           mlp_layer_types=["dense", "sparse"], prefix_dense_intermediate_size=40)
    return Cohere2MoeForCausalLM(cfg)
