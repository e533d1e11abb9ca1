"""Qwen4-Exp (text model, ``qwen4_exp_text``): a linear-attention (Gated DeltaNet) and a full-attention layer with the
sparse-attention indexer, both MoE; softmax top-k not renormalised; a sigmoid-gated shared expert;
hyper-connections and n-gram embeddings at their smallest."""

from ._common import COMMON, E, I


def build():
    from transformers import Qwen4ExpForCausalLM, Qwen4ExpTextConfig

    cfg = Qwen4ExpTextConfig(**COMMON, head_dim=8, moe_intermediate_size=I, shared_expert_intermediate_size=40,
                             num_experts=E, num_experts_per_tok=3, norm_topk_prob=False, linear_key_head_dim=8,
                             linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                             layer_types=["linear_attention", "full_attention"], hc_count=2, hc_lowrank=8,
                             indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=8,
                             indexer_compress_ratio=4, ngram_vocab_size_base=512, split_ngram_parts=1,
                             heads_per_ngram=2)
    return Qwen4ExpForCausalLM(cfg)
