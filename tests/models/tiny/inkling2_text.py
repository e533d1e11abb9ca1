"""Inkling-2 (text model, ``inkling2_text``): sigmoid routing with a non-zero selection bias, the k
scores renormalised and scaled by ``route_scale``, softcapped SwiGLU experts; a sliding-window
and a full ("hybrid") layer, both MoE."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import Inkling2ForCausalLM, Inkling2TextConfig

    cfg = Inkling2TextConfig(**COMMON, head_dim=8, swa_num_attention_heads=4, swa_num_key_value_heads=2,
                             swa_head_dim=8, sliding_window_size=8, d_rel=4, rel_extent=8, unpadded_vocab_size=290,
                             moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=3, route_scale=2.5,
                             n_layers_per_attn_res_block=1, layer_types=["hybrid_sliding", "hybrid"])
    return Inkling2ForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.25)
