"""DeepSeek-V4: a hash-routed first layer then a learned one, sqrt-softplus scores, a non-zero
selection bias, one shared expert, a SwiGLU clamp (``swiglu_limit=1``) that the experts hit, 2
hyper-connection streams."""

import torch

from ._common import COMMON, E, I


def build():
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    cfg = DeepseekV4Config(**{**COMMON, "num_key_value_heads": 1}, head_dim=16, q_lora_rank=16,
                           moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=3, n_shared_experts=1,
                           scoring_func="sqrtsoftplus", routed_scaling_factor=1.5, mlp_layer_types=["hash_moe", "moe"],
                           swiglu_limit=1.0, hc_mult=2, sliding_window=8, o_groups=2, o_lora_rank=8, index_n_heads=2,
                           index_head_dim=8, index_topk=4, qk_rope_head_dim=4)
    return DeepseekV4ForCausalLM(cfg)


def randomize(model, generator: torch.Generator) -> None:
    """A non-zero selection bias, and a hash table sending each token to k distinct experts
    (the all-zero default would send every token to expert 0 k times)."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.2 * torch.randn(b.shape, generator=generator))
            elif name.endswith("tid2eid"):
                vocab, k = b.shape
                b.copy_(torch.rand(vocab, E, generator=generator).argsort(-1)[:, :k])
