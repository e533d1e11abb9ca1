"""Next-token loss per window: the measure every ablation and steering map compares.

A window is one row of a (W, T) int64 token batch without padding. Its loss is the mean next-token cross
entropy over its T − 1 predicted positions, computed in float32 or wider from the logits of a Hugging Face
causal LM (``input_ids=``) or a moescope ``TinyLM`` (positional ids). Token ids outside the model's vocabulary
are refused with an :class:`AblationError` naming their range, before an embedding lookup fails with a bare
``IndexError``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.analysis.router_rewrite import RouterRewriteError


class AblationError(RouterRewriteError):
    """A model, layer or expert that cannot be ablated as asked (named in the message).

    Defined here, in the lowest module that raises it; :mod:`moescope.analysis.ablation` re-exports it."""


def _check_vocab(vocab: int, ids: Tensor) -> None:
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise AblationError(f"token ids must lie in [0, {vocab}) (the model's vocabulary); got ids in "
                            f"[{int(ids.min())}, {int(ids.max())}] — a tokenizer of another model?")


def forward_logits(model: nn.Module, ids: Tensor) -> Tensor:
    """(W, T, V) logits of a Hugging Face causal LM (``input_ids=``) or a moescope ``TinyLM`` (positional)."""
    hf = hasattr(model, "get_input_embeddings")
    embeddings = model.get_input_embeddings() if hf else getattr(model, "wte", None)
    if isinstance(embeddings, nn.Embedding):
        _check_vocab(embeddings.num_embeddings, ids)  # before the lookup fails with a bare IndexError
    ids = ids.to(_input_device(model))
    return (model(input_ids=ids) if hf else model(ids)).logits


def _input_device(model: nn.Module) -> torch.device:
    """Where token ids go: the first resident parameter's device. An accelerate-offloaded embedding is a
    ``meta`` tensor between forwards (ids cannot be moved there); accelerate's hooks move the ids on to the
    execution device themselves."""
    return next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))


def per_window(logits: Tensor, ids: Tensor) -> Tensor:
    """(W,) mean next-token cross entropy of each window, in float32 or wider."""
    _check_vocab(logits.shape[-1], ids)
    ids = ids.to(logits.device)
    wide = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    loss = F.cross_entropy(wide.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return loss.view(ids.shape[0], -1).mean(dim=1)


def window_losses(model: nn.Module, ids: Tensor) -> Tensor:
    """(W,) float64 mean next-token cross entropy of each window of ``ids`` (W, T)."""
    with torch.no_grad():
        logits = forward_logits(model, ids)                                   # (W, T, V)
    return per_window(logits, ids).double().cpu()

