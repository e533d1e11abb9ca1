"""Jamba: Mamba / attention hybrid whose MoE blocks sit on every other layer (the first is dense);
softmax top-k weights are *not* renormalised."""

from ._common import COMMON, E, I


def build():
    from transformers import JambaConfig, JambaForCausalLM

    # layer 0: attention + dense MLP, layer 1: Mamba + MoE; Mamba in pure torch (no CUDA kernels)
    cfg = JambaConfig(**COMMON, intermediate_size=I, num_experts=E, num_experts_per_tok=2,
                      expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=0,
                      use_mamba_kernels=False, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4)
    return JambaForCausalLM(cfg)
