"""Nemotron-H: one mixer per layer — an attention, a dense MLP and an MoE layer; non-gated (ReLU²)
experts stacked as ``up_proj``/``down_proj``; DeepSeek-V3 routing — a non-zero selection bias, 4
expert groups of which 2 are kept, a routed scaling factor — plus one non-gated shared expert."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import NemotronHConfig, NemotronHForCausalLM

    common = {k: v for k, v in COMMON.items() if k != "num_hidden_layers"}
    cfg = NemotronHConfig(**common, head_dim=8, layers_block_type=["full_attention", "mlp", "moe"],
                          intermediate_size=40, moe_intermediate_size=I, moe_shared_expert_intermediate_size=40,
                          n_routed_experts=E, num_experts_per_tok=3, n_group=4, topk_group=2,
                          routed_scaling_factor=2.5)
    return NemotronHForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.5)
