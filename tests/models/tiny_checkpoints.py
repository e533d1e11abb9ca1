"""Tiny random checkpoints of every supported transformers MoE family, saved to disk.

Each model is built from its *real* config class (two decoder layers, hidden 32, expert width
24 so that no weight is square and a transposed layout cannot pass by accident), given random
non-trivial weights, and written with ``save_pretrained`` next to a tiny byte-level BPE
tokenizer trained here with the ``tokenizers`` library (no hub access anywhere).

Family-specific traps are switched on on purpose: DeepSeek-V3 gets a non-zero
``e_score_correction_bias`` and 4 expert groups (2 kept), DeepSeek-V2 group-limited greedy
routing, Switch Transformers an expert capacity of 2 so that tokens are dropped, GPT-OSS
weights large enough to hit its ±limit clamp, Qwen2-MoE / DeepSeek / Llama 4 / GraniteMoE-shared
their shared experts, and DeepSeek-V3 a dense first layer that must not be taken for MoE.
"""

from __future__ import annotations

from pathlib import Path

import torch

H, I, E = 32, 24, 8  # hidden, expert width, routed experts
VOCAB = 300
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "Random vectors in high dimension are almost orthogonal.",
    "x = 3 * (y + 2) - 7 / z",
    "Mixture of experts routes every token to a few experts.",
    "Almost all of the sphere lies near the equator.",
    "for i in range(10): print(i ** 2)",
    "Experts specialise by domain: math, language and code.",
] * 4

_COMMON = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               tie_word_embeddings=False)
_MLA = {**_COMMON, "num_key_value_heads": 4}  # DeepSeek's multi-head latent attention: as many kv heads as heads


def _mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**_COMMON, intermediate_size=I, num_local_experts=E,
                                            num_experts_per_tok=2))


def _qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return Qwen2MoeForCausalLM(Qwen2MoeConfig(**_COMMON, intermediate_size=40, moe_intermediate_size=I,
                                              shared_expert_intermediate_size=40, num_experts=E,
                                              num_experts_per_tok=3, norm_topk_prob=False))


def _qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**_COMMON, head_dim=8, intermediate_size=40, moe_intermediate_size=I,
                                              num_experts=E, num_experts_per_tok=2, norm_topk_prob=True))


def _olmoe():
    from transformers import OlmoeConfig, OlmoeForCausalLM

    return OlmoeForCausalLM(OlmoeConfig(**_COMMON, intermediate_size=I, num_experts=E, num_experts_per_tok=2))


def _deepseek_v2():
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    cfg = DeepseekV2Config(**_MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                           num_experts_per_tok=3, n_shared_experts=1, first_k_dense_replace=0,
                           topk_method="group_limited_greedy", n_group=4, topk_group=2,
                           routed_scaling_factor=1.5, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4,
                           qk_nope_head_dim=8, v_head_dim=8)
    return DeepseekV2ForCausalLM(cfg)


def _deepseek_v3():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = DeepseekV3Config(**_MLA, intermediate_size=40, moe_intermediate_size=I, n_routed_experts=E,
                           num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1, n_group=4,
                           topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True, kv_lora_rank=16,
                           q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8)
    return DeepseekV3ForCausalLM(cfg)


def _llama4():
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    cfg = Llama4TextConfig(**_COMMON, head_dim=8, intermediate_size=I, intermediate_size_mlp=40,
                           num_local_experts=E, num_experts_per_tok=2, attention_chunk_size=64)
    return Llama4ForCausalLM(cfg)


def _gpt_oss():
    from transformers import GptOssConfig, GptOssForCausalLM

    # max_position_embeddings at GPT-OSS's own 131072, or its YaRN factor check complains
    cfg = GptOssConfig(**{**_COMMON, "max_position_embeddings": 131072}, head_dim=8, intermediate_size=I,
                       num_local_experts=E, num_experts_per_tok=4, sliding_window=8)
    return GptOssForCausalLM(cfg)


def _phimoe():
    from transformers import PhimoeConfig, PhimoeForCausalLM

    return PhimoeForCausalLM(PhimoeConfig(**_COMMON, intermediate_size=I, num_local_experts=E,
                                          num_experts_per_tok=2))


def _granitemoe():
    from transformers import GraniteMoeConfig, GraniteMoeForCausalLM

    return GraniteMoeForCausalLM(GraniteMoeConfig(**_COMMON, intermediate_size=I, num_local_experts=E,
                                                  num_experts_per_tok=2))


def _granitemoeshared():
    from transformers import GraniteMoeSharedConfig, GraniteMoeSharedForCausalLM

    return GraniteMoeSharedForCausalLM(GraniteMoeSharedConfig(**_COMMON, intermediate_size=I, num_local_experts=E,
                                                              num_experts_per_tok=2, shared_intermediate_size=40))


def _switch_transformers():
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    cfg = SwitchTransformersConfig(vocab_size=VOCAB, d_model=H, d_kv=8, d_ff=I, num_heads=4, num_layers=2,
                                   num_decoder_layers=2, num_sparse_encoder_layers=2, num_sparse_decoder_layers=2,
                                   num_experts=E, expert_capacity=2, router_bias=True, router_jitter_noise=0.0,
                                   dropout_rate=0.0, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return SwitchTransformersForConditionalGeneration(cfg)


BUILDERS = {"mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "qwen3_moe": _qwen3_moe, "olmoe": _olmoe,
            "deepseek_v2": _deepseek_v2, "deepseek_v3": _deepseek_v3, "llama4_text": _llama4, "gpt_oss": _gpt_oss,
            "phimoe": _phimoe, "granitemoe": _granitemoe, "granitemoeshared": _granitemoeshared,
            "switch_transformers": _switch_transformers}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random N(0, 0.3²) weights everywhere (norm gains near 1), so routing is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name or "layer_norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.3 * noise)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3: non-zero selection bias
                b.copy_(0.5 * torch.randn(b.shape, generator=g))
    if hasattr(model.config, "swiglu_limit"):  # GPT-OSS: big enough to hit the ±limit clamp
        with torch.no_grad():
            for m in model.modules():
                if type(m).__name__ == "GptOssExperts":
                    m.gate_up_proj.mul_(8.0)


def build(family: str, seed: int = 0) -> torch.nn.Module:
    model = BUILDERS[family]()
    _randomize(model, seed)
    return model.float().eval()


def save_tokenizer(path: Path) -> None:
    """A byte-level BPE tokenizer trained on :data:`SENTENCES`, loadable by ``AutoTokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def save(family: str, path: Path, seed: int = 0, tokenizer: bool = True) -> Path:
    """Build ``family``'s tiny model and save it (and the tokenizer) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    build(family, seed).save_pretrained(path)
    if tokenizer:
        save_tokenizer(path)
    return path


def save_dense(path: Path) -> Path:
    """A tiny dense Llama (no MoE layer) for the error path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(LlamaConfig(**_COMMON, intermediate_size=40)).save_pretrained(path)
    return path
