r"""Auxiliary losses of MoE routers, every convention named and documented.

The lecture's load-balancing loss is :math:`\alpha \cdot n \cdot \sum_i f_i P_i` with f_i the
fraction of tokens sent to expert i and P_i the mean router probability of expert i. Real
code bases differ in how f is counted (first choice or all k choices, normalised by k or
not) and in how layers are pooled, which changes the value at perfect balance:

===============  ======================================================  ==============
convention       definition                                              at balance
===============  ======================================================  ==============
``switch``       E Σ f_i P_i, f from the first choice                    1
                 (Fedus et al. 2021, eq. 4–6)
``gshard``       E² mean_i(f_i P_i), first choice (GShard, DeepSpeed's   1
                 ``top1gating``/``top2gating`` l_aux): equal to switch
``hf``           transformers' ``load_balancing_loss_func``: counts and   k
                 probability sums pooled over layers, f over all k
                 choices *not* divided by k
``megablocks``   per layer E Σ f_i P_i with f over all k choices / k,    1
                 then averaged over layers (MegaBlocks)
``deepseek_seq`` per sequence Σ f_i P_i with f_i = E/(k S) · count_i and  1
                 P_i the mean of scores normalised over experts,
                 averaged over sequences (DeepSeek-V3 report, eq. 17–20)
===============  ======================================================  ==============

The table is written once, in :func:`balance_loss_from_counts`, on token sums (expert counts,
probability sums, token counts): :func:`load_balancing_loss` calls it on one batch, and
:class:`moescope.analysis.routing.RoutingStats` on sums streamed over a corpus.

A batch without tokens (T = 0, or every token padding) contributes 0 to every loss here, not
the NaN of a mean over nothing (inside :func:`global_token_sums`: when no rank has a token).

P_i always comes from the router's *full* score distribution (all E experts), never from
the top-k combine weights — taking it from the renormalised top-k weights is a common bug
that makes the loss blind to probability mass on unchosen experts.

Data parallelism. Inside :func:`global_token_sums` every sum over tokens these losses take
(expert counts, probability sums, token and sequence counts, the z-loss's sum of squares) is
all-reduced over the ranks, so each rank computes the loss of the *global* batch, as one
process would on all of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from moescope.moe.result import count_tokens

CONVENTIONS = ("switch", "gshard", "hf", "megablocks", "deepseek_seq")
BALANCED_VALUE = {"switch": "1", "gshard": "1", "hf": "k", "megablocks": "1", "deepseek_seq": "1"}


_GROUPS: list = []  # process groups of the enclosing global_token_sums blocks (innermost last; None = world)


@contextmanager
def global_token_sums(group=None) -> Iterator[None]:
    r"""Inside, the losses of this module are those of the batch summed over ``group``'s ranks.

    Each token sum S is replaced by :math:`\sum_r S_r` (a differentiable all-reduce), so every
    rank gets the same, global f_i, P_i and loss value. Gradient scaling: with every rank
    computing the same loss L, the all-reduce's backward sums the ranks' upstream gradients, so
    rank r receives W · ∂L/∂S_r; DistributedDataParallel then averages the W ranks' gradients,
    which gives exactly ∂L/∂θ of the global loss (tests/lab/test_train_ddp.py checks both
    against one process). Every rank must compute the same losses in the same order.
    """
    _GROUPS.append(group)
    try:
        yield
    finally:
        _GROUPS.pop()


def in_global_token_sums() -> bool:
    """Whether a :func:`global_token_sums` block is open (the losses all-reduce their sums)."""
    return bool(_GROUPS)


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_r x_r on every rank; backward: ∂/∂x_r = Σ_r' ∂L_r'/∂y (the ranks' gradients summed)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _AllReduceSum.apply(grad, ctx.group), None


def _global(*sums: Tensor) -> tuple[Tensor, ...]:
    """The sums unchanged, or inside :func:`global_token_sums` each summed over the ranks (one collective)."""
    if not _GROUPS:
        return sums
    dtype = sums[0].dtype
    for t in sums[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    flat = _AllReduceSum.apply(torch.cat([t.reshape(-1).to(dtype) for t in sums]), _GROUPS[-1])
    parts = flat.split([t.numel() for t in sums])
    return tuple(p.view(t.shape).to(t.dtype) for p, t in zip(parts, sums, strict=True))


def _as_layers(x: Tensor | Sequence[Tensor], name: str) -> list[Tensor]:
    layers = [x] if isinstance(x, Tensor) else list(x)
    if not layers:
        raise ValueError(f"{name} must be a tensor or a non-empty sequence of per-layer tensors")
    return layers


def _mask(mask: Tensor | None, tokens: int, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(tokens, device=device, dtype=torch.float32)
    flat = mask.reshape(-1)
    if flat.numel() != tokens:
        raise ValueError(f"attention_mask has {flat.numel()} entries but the router saw {tokens} tokens")
    return flat.to(device=device, dtype=torch.float32)


def _counts(indices: Tensor, num_experts: int, weight: Tensor) -> Tensor:
    """(E,) Σ_t weight_t · #{slots of t choosing e}; -1 slots count for nothing."""
    valid = indices >= 0
    w = weight.unsqueeze(-1).expand_as(indices) * valid
    out = torch.zeros(num_experts, device=indices.device, dtype=torch.float32)
    return out.scatter_add_(0, indices.clamp_min(0).reshape(-1), w.reshape(-1).float())


def balance_loss_from_counts(
    convention: str,
    *,
    prob_sum: Tensor,
    tokens: Tensor | int,
    top_k: int = 1,
    counts: Tensor | None = None,
    first_counts: Tensor | None = None,
) -> Tensor:
    r"""The load-balancing loss of ``convention`` from token sums: :math:`E \sum_i f_i P_i`.

    The one place the formula is written. :func:`load_balancing_loss` calls it on the sums of
    one batch, :class:`moescope.analysis.routing.RoutingStats` on sums streamed over a corpus.
    With :math:`T = \max(\text{tokens}, 1)` (no tokens: loss 0),

    .. math:: f_i = \frac{c_i}{m \, T}, \qquad P_i = \frac{\text{prob\_sum}_i}{T},

    where ``switch`` and ``gshard`` count first choices (c = ``first_counts``, m = 1), ``hf``
    all k choices not divided by k (c = ``counts``, m = 1), and ``megablocks`` and
    ``deepseek_seq`` all k choices divided by k (c = ``counts``, m = ``top_k``). How sums are
    pooled is the caller's: ``hf`` over layers pools the sums and passes tokens = T·L;
    ``deepseek_seq`` passes one row of sums per sequence and averages the per-sequence results.

    Args:
        convention: one of :data:`CONVENTIONS`.
        prob_sum: (..., E) Σ_t P_{t,i} over the counted tokens (the full score distribution).
        tokens: T, an int or a () / (...) tensor (one per leading index, e.g. per sequence).
        top_k: k, the chosen slots per token.
        counts: (..., E) how often expert i is among a token's chosen experts (all k slots).
        first_counts: (..., E) how often expert i is a token's first choice.

    Returns:
        (...) the loss per leading index, in ``prob_sum``'s dtype.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}; got convention={convention!r}")
    first = convention in ("switch", "gshard")
    chosen = first_counts if first else counts
    if chosen is None:
        raise ValueError(f"convention={convention!r} needs {'first_counts' if first else 'counts'}")
    slots = top_k if convention in ("megablocks", "deepseek_seq") else 1
    if isinstance(tokens, Tensor):
        t = tokens.to(prob_sum.dtype).clamp_min(1.0)
        t = t.unsqueeze(-1) if t.ndim else t
    else:
        t = max(1, int(tokens))
    f = chosen.to(prob_sum.dtype) / (t * slots)
    p = prob_sum / t
    return prob_sum.shape[-1] * torch.sum(f * p, dim=-1)


def load_balancing_loss(
    scores: Tensor | Sequence[Tensor],
    indices: Tensor | Sequence[Tensor],
    *,
    convention: str = "switch",
    attention_mask: Tensor | None = None,
    sequence_length: int | None = None,
) -> Tensor:
    """The load-balancing loss under ``convention`` (see the module table), unscaled (α = 1).

    Args:
        scores: (T, E) full score distribution per layer (softmax probabilities; for
            ``deepseek_seq`` the sigmoid scores), or a sequence of them, one per layer.
        indices: (T, k) chosen experts per layer, highest weight first (column 0 is the
            first choice); -1 marks an empty slot.
        convention: one of ``switch``, ``gshard``, ``hf``, ``megablocks``, ``deepseek_seq``.
        attention_mask: (T,) or (B, S) with 1 for real tokens and 0 for padding; padding
            counts neither in f nor in P.
        sequence_length: S for ``deepseek_seq`` (T = B·S); default: all T tokens form one
            sequence.

    Returns:
        A float32 scalar.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}; got convention={convention!r}")
    score_layers, index_layers = _as_layers(scores, "scores"), _as_layers(indices, "indices")
    if len(score_layers) != len(index_layers):
        raise ValueError(f"got {len(score_layers)} score tensors but {len(index_layers)} index tensors")
    num_experts = score_layers[0].shape[-1]
    for s, i in zip(score_layers, index_layers, strict=True):
        if s.ndim != 2 or i.ndim != 2 or s.shape[0] != i.shape[0] or s.shape[1] != num_experts:
            raise ValueError(f"expected scores (T, E) and indices (T, k); got {tuple(s.shape)} and {tuple(i.shape)}")
    if attention_mask is None and not _GROUPS and convention != "deepseek_seq":
        return _unmasked(score_layers, index_layers, convention)
    device = score_layers[0].device
    mask = _mask(attention_mask, score_layers[0].shape[0], device)

    if convention == "hf":  # pooled over layers, all k choices, not divided by k
        counts = sum(_counts(i, num_experts, mask) for i in index_layers)
        probs = sum((s.float() * mask.unsqueeze(-1)).sum(0) for s in score_layers)
        counts, probs, rows = _global(counts, probs, mask.sum() * len(score_layers))
        return balance_loss_from_counts("hf", counts=counts, prob_sum=probs, tokens=rows)

    per_layer = []
    for s, i in zip(score_layers, index_layers, strict=True):
        s = s.float()
        if convention == "deepseek_seq":
            per_layer.append(_deepseek_sequence_loss(s, i, mask, sequence_length))
            continue
        first = convention in ("switch", "gshard")                      # f reads the first choice only
        counts, probs, rows = _global(_counts(i[:, :1] if first else i, num_experts, mask),
                                      (s * mask.unsqueeze(-1)).sum(0), mask.sum())
        per_layer.append(balance_loss_from_counts(convention, prob_sum=probs, tokens=rows, top_k=i.shape[-1],
                                                  **{"first_counts" if first else "counts": counts}))
    return torch.stack(per_layer).mean()


def _unmasked(score_layers: list[Tensor], index_layers: list[Tensor], convention: str) -> Tensor:
    """The switch / gshard / hf / megablocks losses without padding or data parallelism: the same
    definitions as the masked path (tests/moe/test_losses.py holds the two equal), in a third of
    the tensor operations: on a 16-token batch the masked path's many small operations cost
    several times the router itself."""
    num_experts = score_layers[0].shape[-1]
    if convention == "hf":
        counts = sum(count_tokens(i, num_experts).float() for i in index_layers)
        probs = sum(s.float().sum(0) for s in score_layers)
        return balance_loss_from_counts("hf", counts=counts, prob_sum=probs,
                                        tokens=score_layers[0].shape[0] * len(score_layers))
    per_layer = []
    for s, i in zip(score_layers, index_layers, strict=True):
        first = convention in ("switch", "gshard")
        counts = count_tokens(i[:, :1] if first else i, num_experts).float()
        per_layer.append(balance_loss_from_counts(convention, prob_sum=s.float().sum(0), tokens=s.shape[0],
                                                  top_k=i.shape[-1], **{"first_counts" if first else "counts": counts}))
    return per_layer[0] if len(per_layer) == 1 else torch.stack(per_layer).mean()


def _deepseek_sequence_loss(scores: Tensor, indices: Tensor, mask: Tensor, seq_len: int | None) -> Tensor:
    tokens, num_experts = scores.shape
    k = indices.shape[-1]
    seq_len = tokens if seq_len is None else seq_len
    if tokens and (seq_len < 1 or tokens % seq_len):
        raise ValueError(f"sequence_length={seq_len} does not divide the {tokens} tokens")
    n_seq = tokens // seq_len if tokens else 0
    normed = scores / scores.sum(-1, keepdim=True).clamp_min(1e-20)       # s'_{i,t}
    onehot = torch.zeros(tokens, num_experts, device=scores.device)
    valid = (indices >= 0).float()
    onehot.scatter_add_(1, indices.clamp_min(0), valid)                     # (T, E) chosen
    m = mask.view(n_seq, seq_len, 1)
    counts = (onehot.view(n_seq, seq_len, num_experts) * m).sum(1)         # (n_seq, E)
    probs = (normed.view(n_seq, seq_len, num_experts) * m).sum(1)           # (n_seq, E)
    per_seq = balance_loss_from_counts("deepseek_seq", counts=counts, prob_sum=probs, tokens=m.sum((1, 2)), top_k=k)
    total, count = per_seq.sum(), torch.tensor(float(n_seq), device=scores.device)
    if _GROUPS:
        total, count = _global(total, count)                                  # mean over all sequences
    return total / count.clamp_min(1.0)                                      # no sequences: 0


def router_z_loss(logits: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5): mean_t (logsumexp_e logits_{t,e})²."""
    z = torch.logsumexp(logits.float(), dim=-1).square()
    if attention_mask is None and not _GROUPS:
        return z.sum() / max(1, z.shape[0])
    mask = _mask(attention_mask, z.shape[0], z.device)
    total, rows = _global((z * mask).sum(), mask.sum())
    return total / rows.clamp_min(1.0)
