"""MiniMax-M3 (text model of MiniMax-M3-VL): sigmoid scores with a non-zero selection bias, weights
renormalised, the routed sum scaled after the experts; clamped SwiGLU experts (the limit set low so
that the clamp bites) and a fused shared expert; the first layer's MLP dense."""

from ._common import COMMON, E, I, selection_bias


def build():
    from transformers import MiniMaxM3VLForCausalLM, MiniMaxM3VLTextConfig

    cfg = MiniMaxM3VLTextConfig(**COMMON, head_dim=8, rotary_dim=4, intermediate_size=I, dense_intermediate_size=40,
                                shared_intermediate_size=40, num_local_experts=E, num_experts_per_tok=3,
                                routed_scaling_factor=2.5, swiglu_limit=1.5, mlp_layer_types=["dense", "sparse"])
    return MiniMaxM3VLForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.5)
