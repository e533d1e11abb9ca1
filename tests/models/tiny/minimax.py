"""MiniMax: Mixtral's MoE block under alternating lightning (linear) and full attention."""

from ._common import COMMON, E, I


def build():
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    cfg = MiniMaxConfig(**COMMON, head_dim=8, intermediate_size=I, num_local_experts=E, num_experts_per_tok=2,
                        layer_types=["linear_attention", "full_attention"], block_size=4,
                        mlp_alpha_factor=0.5, mlp_beta_factor=2.0)
    return MiniMaxForCausalLM(cfg)
