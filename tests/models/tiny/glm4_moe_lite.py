"""GLM-4-MoE-Lite: MLA attention, ``mlp_layer_types`` dense then sparse, 2 shared experts, 4 groups
(2 kept), a non-zero selection bias."""

from ._common import MLA, E, I, selection_bias


def build():
    from transformers import Glm4MoeLiteConfig, Glm4MoeLiteForCausalLM

    cfg = Glm4MoeLiteConfig(**MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                            num_experts_per_tok=3, n_shared_experts=2, mlp_layer_types=["dense", "sparse"], n_group=4,
                            topk_group=2, routed_scaling_factor=1.8, kv_lora_rank=16, q_lora_rank=16,
                            qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8)
    return Glm4MoeLiteForCausalLM(cfg)


# A selection bias of a quarter of the sigmoid scores' range, so the choices are not the top-k of the scores.
randomize = selection_bias(0.25)
