"""DBRX: softmax top-k whose k weights are divided by their p-norm; experts as flat (E·I, H) matrices."""

from ._common import COMMON, VOCAB, E, H, I


def build():
    from transformers import DbrxConfig, DbrxForCausalLM

    # rope_theta and clip_qkv as in the released config.json: transformers 5.24 reads
    # attn_config.rope_theta unconditionally and clamps with clip_qkv even when it is None.
    attn = {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 500000.0}
    ffn = {"ffn_hidden_size": I, "moe_num_experts": E, "moe_top_k": 3, "moe_normalize_expert_weights": 1.0}
    cfg = DbrxConfig(d_model=H, n_heads=4, n_layers=2, max_seq_len=COMMON["max_position_embeddings"],
                     vocab_size=VOCAB, attn_config=attn, ffn_config=ffn, pad_token_id=0, bos_token_id=1,
                     eos_token_id=2, tie_word_embeddings=False)
    return DbrxForCausalLM(cfg)
