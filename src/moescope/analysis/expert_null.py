r"""Expert subspaces against a *data-matched* null: the layer's own hidden units, grouped at random.

The isotropic null of :mod:`moescope.analysis.weights` (Haar-random r-dimensional subspaces of
R^H) is the right null for an *untrained* layer, but training pulls every FFN neuron toward the
high-variance directions of its input, so any trained feed-forward block — dense or MoE —
overlaps far more than Haar subspaces do. Whether the *experts* are more (or less) separated
than the neurons they are built from is a question about the grouping, so the null shuffles
exactly that: pool the E·I hidden units of the layer (unit j of expert e = its gate row and its
up row, the directions it reads), deal them into E groups of I at random, and measure the same
statistic at the same rank r. Everything else — the neurons, their norms, the rank — is kept.

Statistic: the mean over expert pairs of Σcos²θ between the top-r input subspaces (the top-r
right singular vectors of the group's stacked [gate; up] rows, i.e. the top-r eigenvectors of
its Gram matrix WᵀW), computed as ||Q_aᵀ Q_b||_F², which equals the sum of squared cosines of the
principal angles (Björck & Golub 1973).

Feasibility: E subspaces of rank r in R^H can all be mutually orthogonal only when E·r <= H. In
general Σ_{a≠b} tr(P_a P_b) = ||Σ_e P_e||_F² − E·r >= (E·r)²/H − E·r (Cauchy–Schwarz on the
eigenvalues of Σ P_e, whose trace is E·r and rank at most H), so the mean overlap is at least
r(E·r − H) / (H(E − 1)) — reached by a tight frame. Above that bound near-orthogonality in the
absolute sense is impossible, and only the relative reading (against the permutation null) is
meaningful.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from moescope.models.view import MoELayerView

__all__ = ["DEFAULT_DRAWS", "feasible_min_overlap", "grouping_null", "hidden_units", "overlap_of_groups",
           "units_rank", "view_grouping_null"]

DEFAULT_DRAWS = 200          # permutation draws: p-values down to 1/201, a percentile interval of 200 values
MAX_GRAM_ELEMENTS = 1 << 28  # draws·E·H² float64 entries built at once at most (2 GiB); larger: fewer draws per chunk
MAX_UNIT_ELEMENTS = 1 << 27  # E·I·m·H entries of the pooled units (1 GiB in float64): above, the null is skipped


def hidden_units(view: MoELayerView) -> Tensor:
    """(E, I, m, H) float64: per routed expert, each hidden unit's read directions (m = 2: gate, up; 1: up)."""
    rows = []
    for e in range(view.num_experts):
        w = view.expert(e)
        parts = [w.up] if w.gate is None else [w.gate, w.up]
        rows.append(torch.stack([p.detach().to(torch.float64) for p in parts], dim=1))    # (I, m, H)
    return torch.stack(rows)


def feasible_min_overlap(num_experts: int, rank: int, hidden: int) -> float:
    """The least mean Σcos²θ over pairs that E subspaces of rank r in R^H can have (0 when E·r <= H)."""
    e, r, h = num_experts, rank, hidden
    return max(0.0, r * (e * r - h) / (h * (e - 1)))


def _bases(units: Tensor, rank: int) -> Tensor:
    """(G, n, m, H) units of G groups -> (G, H, r) orthonormal top-r read subspaces (Gram eigenvectors).

    The Gram matrix is summed in the units' precision and decomposed in float32 (faster than
    float64; overlaps agree with float64 to ~1e-6, far below the 1% effects read).
    """
    g, n, m, h = units.shape
    w = units.reshape(g, n * m, h)
    gram = w.transpose(1, 2) @ w                                      # (G, H, H)
    _, vecs = torch.linalg.eigh(gram.to(torch.float32))               # ascending eigenvalues
    return vecs[..., -rank:].to(units.dtype)


def overlap_of_groups(units: Tensor, rank: int) -> Tensor:
    """Mean over the pairs of groups of ||Q_aᵀQ_b||_F² for a batch of groupings.

    Args:
        units: (D, G, n, m, H) D groupings of G groups of n units each.

    Returns:
        (D,) the mean Σcos²θ over the G(G−1)/2 pairs of each grouping.
    """
    d, g = units.shape[:2]
    q = _bases(units.reshape(d * g, *units.shape[2:]), rank).reshape(d, g, units.shape[-1], rank)
    cross = torch.einsum("dahr,dbhs->dabrs", q, q).square().sum((-1, -2))     # (D, G, G)
    off = ~torch.eye(g, dtype=torch.bool)
    return cross[:, off].mean(-1)


def units_rank(units: Tensor, energy: float = 0.5) -> int:
    """The median over groups of the least r whose top-r subspace holds ``energy`` of the group's ||W||_F².

    Capped at H/2 (so two subspaces are never forced to intersect) — the rule of
    :mod:`moescope.analysis.weights`, applied to (G, n, m, H) units.
    """
    g, n, m, h = units.shape
    w = units.reshape(g, n * m, h)
    ev = torch.linalg.eigvalsh(w.transpose(1, 2) @ w).flip(-1).clamp_min(0)    # (G, H) descending
    share = ev.cumsum(-1) / ev.sum(-1, keepdim=True)
    ranks = (share < energy).sum(-1) + 1
    return int(min(int(ranks.median()), max(1, h // 2)))


def grouping_null(units: Tensor, *, rank: int | None = None, draws: int = DEFAULT_DRAWS, seed: int = 0,
                  energy: float = 0.5) -> dict:
    """The observed expert overlap against random regroupings of the same hidden units.

    Args:
        units: (E, I, m, H) hidden units of E groups (:func:`hidden_units`; a dense FFN reshaped into
            E groups works the same way).
        rank: subspace dimension r; None: :func:`units_rank` of the observed groups.
        draws: permutation draws (>= 20).
        seed: seeds the permutations.

    Returns:
        JSON-ready dict: ``rank``, ``hidden``, ``num_experts``, ``group_size``, ``observed`` (mean Σcos²θ
        over pairs), ``null`` (draws values), ``null_mean``, ``ratio`` (observed / null_mean),
        ``p_less`` / ``p_greater`` (permutation p-values), ``isotropic_null`` (r²/H, Haar subspaces),
        ``ratio_to_isotropic``, ``feasible_min`` (:func:`feasible_min_overlap`) and ``feasible``
        (E·r <= H: can the experts be exactly orthogonal at all); or ``skipped`` with the reason.
    """
    if units.ndim != 4:
        raise ValueError(f"units must be (E, I, m, H); got shape {tuple(units.shape)}")
    e, n, m, h = units.shape
    if e < 2:
        raise ValueError(f"need at least two groups to compare; got E={e}")
    if not isinstance(draws, int) or draws < 20:
        raise ValueError(f"draws must be an integer >= 20; got draws={draws!r}")
    r = units_rank(units, energy) if rank is None else rank
    if not 1 <= r <= min(h, n * m):
        raise ValueError(f"rank must lie in [1, min(H, I·m)] = [1, {min(h, n * m)}]; got rank={r}")
    base = {"rank": r, "hidden": h, "num_experts": e, "group_size": n, "draws": draws,
            "isotropic_null": r * r / h, "feasible_min": feasible_min_overlap(e, r, h), "feasible": e * r <= h}
    if units.numel() > MAX_UNIT_ELEMENTS:
        return {**base, "skipped": f"{e}×{n} hidden units of width {h} are too many to regroup {draws} times here"}
    units = units.to(torch.float64)
    observed = float(overlap_of_groups(units[None], r)[0])
    pool = units.reshape(e * n, m, h)
    gen = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(e * n, generator=gen) for _ in range(draws)])    # (D, E·I)
    chunk = max(1, MAX_GRAM_ELEMENTS // (e * h * h))
    null = torch.cat([overlap_of_groups(pool[perms[i:i + chunk]].reshape(-1, e, n, m, h), r)
                      for i in range(0, draws, chunk)]).numpy()
    null_mean = float(null.mean())
    return {**base, "observed": observed, "null": null.tolist(), "null_mean": null_mean,
            "ratio": observed / null_mean if null_mean > 0 else math.nan,
            "p_less": float((1 + (null <= observed).sum()) / (1 + draws)),
            "p_greater": float((1 + (null >= observed).sum()) / (1 + draws)),
            "ratio_to_isotropic": observed / (r * r / h)}


def view_grouping_null(view: MoELayerView, **kw) -> dict:
    """:func:`grouping_null` of a live or on-disk MoE layer's routed experts."""
    return grouping_null(hidden_units(view), **kw)

