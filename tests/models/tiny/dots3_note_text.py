"""dots3-note (text model, ``dots3_note_text``): DeepSeek-V3 routing (a non-zero selection bias, 4
groups of which 2 are kept, a routed scaling factor), one shared expert of its own width (40 ≠
routed width 24), a dense first layer."""

from ._common import MLA, E, I, selection_bias


def build():
    from transformers import Dots3NoteForCausalLM, Dots3NoteTextConfig

    cfg = Dots3NoteTextConfig(**MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                              num_experts_per_tok=3, n_shared_experts=1, shared_experts_intermediate_size=40,
                              mlp_layer_types=["dense", "sparse"], n_group=4, topk_group=2, routed_scaling_factor=1.8)
    return Dots3NoteForCausalLM(cfg)


# The selection bias is a zero buffer at init: make it large enough to change choices.
randomize = selection_bias(0.25)
