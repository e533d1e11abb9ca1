"""JetMoE: top-k MoE MLP with an output bias, and a mixture of attention heads (not an MoE MLP)."""

from ._common import COMMON, E, I


def build():
    from transformers import JetMoeConfig, JetMoeForCausalLM

    common = {k: v for k, v in COMMON.items() if k != "num_attention_heads"}  # = kv heads · k, derived
    cfg = JetMoeConfig(**common, kv_channels=8, intermediate_size=I, num_local_experts=E, num_experts_per_tok=2)
    return JetMoeForCausalLM(cfg)
