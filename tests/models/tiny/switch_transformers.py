"""Switch Transformers: top-1 with an expert capacity of 2, so that tokens are dropped; a router bias."""

from ._common import VOCAB, E, H, I


def build():
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    cfg = SwitchTransformersConfig(vocab_size=VOCAB, d_model=H, d_kv=8, d_ff=I, num_heads=4, num_layers=2,
                                   num_decoder_layers=2, num_sparse_encoder_layers=2, num_sparse_decoder_layers=2,
                                   num_experts=E, expert_capacity=2, router_bias=True, router_jitter_noise=0.0,
                                   dropout_rate=0.0, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return SwitchTransformersForConditionalGeneration(cfg)
