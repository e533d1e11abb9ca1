"""Sizes and config arguments shared by the tiny checkpoints (one file per family beside this one).

Every tiny model: two (or as few as the family allows) decoder layers, hidden H = 32, expert
width I = 24 so that no weight is square and a transposed layout cannot pass by accident,
E = 8 routed experts, a 300-token vocabulary. A family file defines ``build()`` returning the
untrained model built from its *real* transformers config class; ``tiny_checkpoints.save``
gives it random non-trivial weights and writes it with ``save_pretrained``.
"""

H, I, E = 32, 24, 8  # hidden, expert width, routed experts
VOCAB = 300

COMMON = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
              tie_word_embeddings=False)
MLA = {**COMMON, "num_key_value_heads": 4}  # DeepSeek's multi-head latent attention: as many kv heads as heads


def selection_bias(scale: float, suffix: str = "e_score_correction_bias"):
    """A ``randomize`` hook drawing the family's selection bias (a zero buffer or frozen parameter at
    init, untouched by the common randomisation) from N(0, scale²), so the choices differ from the
    top-k of the scores."""
    import torch

    def randomize(model, generator: torch.Generator) -> None:
        with torch.no_grad():
            for name, t in (*model.named_buffers(), *model.named_parameters()):
                if name.endswith(suffix):
                    t.copy_(scale * torch.randn(t.shape, generator=generator))

    return randomize
