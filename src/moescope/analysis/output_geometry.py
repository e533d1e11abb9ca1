"""Geometry of expert outputs: subspaces, their overlap and interference, against a permutation null.

The pure math of :mod:`moescope.analysis.expert_activity` (which collects the rows from a model): given
each expert's output rows (n_e, H), :func:`output_geometry` measures each expert's effective rank and
subspace, the mean pairwise overlap of the subspaces and each expert's interference (the share of its
output energy in the span of the others' subspaces), each against the same statistic of the experts' own
rows dealt out at random with the experts' row counts (a permutation null that keeps everything but which
expert a row came from), with :mod:`moescope.stats`'s ratio interval and p-values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from moescope.analysis.expert_null import feasible_min_overlap
from moescope.stats import DEFAULT_LEVEL, permutation_pvalue, permutation_ratio

__all__ = ["MAX_NULL_WORK", "output_geometry"]

MIN_ROWS = 4                # fewer rows than this say nothing about a subspace, whatever r
MIN_DRAWS = 39              # the least draws for a finite 95% order-statistic interval (k >= 1)
MAX_ELEMENTS = 1 << 25      # float64 entries built at once per chunk of draws (256 MiB)
MAX_NULL_WORK = 2e12        # flops of the interference null above which it is skipped (~ a minute on 2 cores)
DROP = 1e-10                # an eigen-direction below this share of the top one carries no energy: left out
                            # (float64 spectra of float32 rows: a direction the rows lack comes out near 1e-14)
MATRIX_EXPERTS = 64         # the pairwise overlap matrix goes into the results up to this E
ROUND = 12                  # statistics rounded to 1e-12 before the permutation tests: rounding noise is no effect
SMALL = 256                 # eigenproblems up to this width run on one CPU thread (see _few_threads)



def _num(x) -> float | None:
    """A JSON-ready float; None for None, NaN or ±inf (JSON has neither)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- geometry (pure math)

def _bases(y: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """(D, G, n, H) row groups (zero rows = padding) -> (D, G, H, r) orthonormal top-r right singular vectors
    (columns with no energy zeroed) and the (D, G) total energies ||Y||_F²."""
    n, h = y.shape[-2:]
    energy = y.square().sum((-1, -2))
    if n <= h:   # the n×n Gram Y Yᵀ: eigenvectors u give v = Yᵀ u / σ (zero padding rows add zero eigenvalues)
        lam, u = torch.linalg.eigh(y @ y.transpose(-1, -2))                   # ascending, (D, G, n), (D, G, n, n)
        lam, u = lam[..., -r:], u[..., -r:]
        keep = lam > DROP * lam[..., -1:].clamp_min(0)
        q = (y.transpose(-1, -2) @ u) / lam.clamp_min(torch.finfo(y.dtype).tiny).sqrt().unsqueeze(-2)  # (D, G, H, r)
    else:        # the H×H Gram Yᵀ Y: its eigenvectors are the subspace
        lam, v = torch.linalg.eigh(y.transpose(-1, -2) @ y)                   # (D, G, H), (D, G, H, H)
        lam, q = lam[..., -r:], v[..., -r:]
        keep = lam > DROP * lam[..., -1:].clamp_min(0)
    keep &= lam > 0
    return q * keep.unsqueeze(-2), energy


def _statistics(y: Tensor, r: int, interference: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """For D groupings of G row groups (D, G, n, H): the (D,) mean pairwise mean cos², the (D, G, G) pairwise
    matrix, and (D, G) each group's share of energy in the span of the others' subspaces (or None)."""
    d, g, _, h = y.shape
    q, energy = _bases(y, r)                                                   # (D, G, H, r), (D, G)
    cross = torch.einsum("dahr,dbhs->dabrs", q, q)                             # (D, G, G, r, r) = Q_aᵀ Q_b
    pair = cross.square().sum((-1, -2)) / r                                    # (D, G, G) mean cos²
    upper = torch.triu(torch.ones(g, g, dtype=torch.bool, device=y.device), diagonal=1)
    overlap = pair[:, upper].mean(-1)                                          # (D,)
    if not interference:
        return overlap.round(decimals=ROUND), pair, None
    c = g * r
    gram = cross.permute(0, 1, 3, 2, 4).reshape(d, c, c)                       # (D, G·r, G·r) = AᵀA, A = [Q_1 … Q_G]
    z = y @ q.permute(0, 2, 1, 3).reshape(d, 1, h, c)                          # (D, G, n, G·r) = Y_g A
    col = torch.arange(c, device=y.device)
    others = (col // r)[None, :] != torch.arange(g, device=y.device)[:, None]  # (G, G·r): columns of the others
    sub = gram[:, None] * (others[:, :, None] & others[:, None, :])            # (D, G, G·r, G·r): g's block 0
    lam, w = torch.linalg.eigh(sub)                                            # pseudo-inverse of the others' Gram
    keep = lam > DROP * lam[..., -1:].clamp_min(1e-30)
    proj = (z * others[None, :, None, :]) @ w                                  # (D, G, n, G·r)
    inside = (proj.square().sum(-2) / lam.clamp_min(1e-30) * keep).sum(-1)     # Σ ||P_{−g} y||² (D, G)
    share = (inside / energy.clamp_min(1e-30)).clamp(0.0, 1.0)
    return overlap.round(decimals=ROUND), pair, share.round(decimals=ROUND)


@contextmanager
def _few_threads(device: torch.device, size: int) -> Iterator[None]:
    """One CPU thread for batches of small eigenproblems (<= :data:`SMALL` wide): each is too small to share, and
    splitting the batch over busy cores costs far more than it saves (100× on a loaded 2-core machine)."""
    if device.type != "cpu" or size > SMALL:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _spectrum(y: Tensor) -> Tensor:
    """(n, H) rows -> their squared singular values, descending, float64."""
    y = y.double()
    gram = y @ y.T if y.shape[0] <= y.shape[1] else y.T @ y
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)


def _summary(observed: float | None, null: np.ndarray | None, level: float, side_note: str) -> dict:
    """Observed against its permutation draws: null mean, ratio with interval, p-values (moescope.stats)."""
    out = {"observed": _num(observed), "null_mean": None, "ratio": None, "interval": None, "p_value": None,
           "p_greater": None, "draws": 0 if null is None else int(null.size), "null": None, "reason": None}
    if null is None:
        out["reason"] = side_note or "no permutation draws (draws=0)"
        return out
    out["null"] = [float(v) for v in null]
    out["null_mean"] = _num(null.mean())
    out["p_value"] = permutation_pvalue(observed, null, "less")
    out["p_greater"] = permutation_pvalue(observed, null, "greater")
    if (null > 0).all():
        ratio, (lo, hi) = permutation_ratio([observed], [null], level)
        out["ratio"] = _num(ratio)
        out["interval"] = [_num(lo), _num(hi)] if math.isfinite(lo) and math.isfinite(hi) else None
    else:
        out["reason"] = "some null draws are 0: no ratio to them"
    return out


def output_geometry(rows: Sequence[Tensor], *, hidden: int | None = None, rank: int | None = None,
                    energy: float = 0.9, draws: int = 199, seed: int | Sequence[int] = 0,
                    level: float = DEFAULT_LEVEL, device: str | torch.device = "cpu") -> dict:
    """Effective ranks, subspace overlap and interference of E experts' output rows, against the permutation null.

    Args:
        rows: E tensors (n_e, H), expert e's output rows (n_e may be 0).
        hidden: H (needed only when every expert has no rows).
        rank: the common subspace rank r (1 <= r <= H/2), or None for the median energy rank (module docstring).
        energy: share of ||Y_e||_F² an expert's own rank must hold, in (0, 1].
        draws: permutation draws (0: no null; else >= 39).
        seed: seeds the permutations (an int or a sequence of ints, numpy's SeedSequence entropy).

    Returns:
        JSON-ready ``{"rank", "rank_rule", "experts_compared", "experts": [{"expert", "rows", "effective_rank",
        "rank", "captured", "interference", "null_interference", "interference_p", "reason"}], "overlap": {...},
        "interference": {...}, "matrix"}`` — ``overlap`` and ``interference`` as :func:`expert_activity` documents.
    """
    _check_geometry(rank=rank, energy=energy, draws=draws, level=level)
    if not rows or not all(isinstance(y, Tensor) and y.dim() == 2 for y in rows):
        raise ValueError(f"rows must be a non-empty sequence of (n_e, H) tensors; got "
                         f"{[tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__ for y in rows]}")
    h = hidden if hidden is not None else rows[0].shape[-1]
    if any(y.shape[-1] != h for y in rows):
        raise ValueError(f"rows must all have H = {h} columns; got {[tuple(y.shape) for y in rows]}")
    rows = [y.detach().to("cpu", torch.float64) for y in rows]
    if rank is not None and rank > max(1, h // 2):
        raise ValueError(f"rank must lie in [1, H/2] = [1, {max(1, h // 2)}] (H = {h}); got rank={rank}")
    experts, own, spectra = [], {}, {}
    for e, y in enumerate(rows):
        item = {"expert": e, "rows": int(y.shape[0]), "effective_rank": None, "rank": None, "captured": None,
                "interference": None, "null_interference": None, "interference_p": None, "reason": None}
        if y.shape[0] < MIN_ROWS:
            item["reason"] = f"{y.shape[0]} output rows; at least {MIN_ROWS} are needed for a subspace"
        else:
            lam = _spectrum(y)
            total = float(lam.sum())
            if total <= 0:
                item["reason"] = "every output is zero"
            else:
                p = lam[lam > 0] / total
                item["effective_rank"] = float(torch.exp(-(p * p.log()).sum()))
                own[e] = int((lam.cumsum(0) / total < energy - 1e-12).sum()) + 1
                item["rank"], spectra[e] = own[e], lam / total
        experts.append(item)
    if rank is not None:
        r, rule = rank, "fixed"
    elif own:   # the median energy rank, capped so that r <= H/2 and half the experts have the 2r rows it needs
        cap = max(1, min(h // 2, int(np.median([rows[e].shape[0] for e in own])) // 2))
        r, rule = min(int(np.floor(np.median(list(own.values())))), cap), "energy"
    else:
        r, rule = None, "energy"
    for e, share in spectra.items():
        experts[e]["captured"] = float(share[:r].sum())
    need = max(MIN_ROWS, 2 * r) if r is not None else MIN_ROWS
    taking = [e for e in own if rows[e].shape[0] >= need]
    for e in own:
        if e not in taking:
            experts[e]["reason"] = f"{rows[e].shape[0]} output rows; at least max({MIN_ROWS}, 2r) = {need} are needed"
    out = {"rank": r, "rank_rule": rule, "energy": energy, "hidden": h, "experts_compared": len(taking),
           "feasible_min": None, "experts": experts, "matrix": None}
    few = f"{len(taking)} experts have enough rows; at least 2 are needed to compare subspaces"
    if len(taking) < 2:
        out["overlap"] = _summary(None, None, level, few)
        out["interference"] = {**_summary(None, None, level, few), "others_can_fill": None}
        for e in taking:
            experts[e]["reason"] = few
        return out
    g = len(taking)
    out["feasible_min"] = feasible_min_overlap(g, r, h) / r          # least mean cos² g r-subspaces of R^h can have
    # one padded block of rows: group i holds expert taking[i]'s rows, then zero rows
    sizes = [rows[e].shape[0] for e in taking]
    n = max(sizes)
    pool = torch.cat([*(rows[e] for e in taking), torch.zeros(1, h, dtype=torch.float64)]).to(device)  # row N: 0
    index = torch.full((g, n), pool.shape[0] - 1, dtype=torch.long)
    start = 0
    for i, s in enumerate(sizes):
        index[i, :s] = torch.arange(start, start + s)
        start += s
    c = g * r                                  # ~flops of one grouping's interference: G pseudo-inverses of
    work = g * (float(c) ** 3 + 2.0 * n * c * (h + c))   # width c, and each group's rows against every basis
    with _few_threads(pool.device, max(min(n, h), g * r)):
        obs_overlap, pair, obs_share = _statistics(pool[index.to(pool.device)][None], r, work <= MAX_NULL_WORK)
    matrix = None
    if len(rows) <= MATRIX_EXPERTS:
        matrix = [[None] * len(rows) for _ in rows]
        for i, a in enumerate(taking):
            for j, b in enumerate(taking):
                matrix[a][b] = _num(pair[0, i, j])
    out["matrix"] = matrix
    null_overlap = null_share = None
    null_interference = (draws + 1) * work <= MAX_NULL_WORK
    if draws:
        rng = np.random.default_rng(seed)
        perms = torch.from_numpy(np.stack([rng.permutation(start) for _ in range(draws)]))   # (D, N)
        flat = torch.where(index < start, index, -1)                                        # (G, n), -1 = padding
        per_draw = g * (n * h + max(n, h) ** 2 + h * r) + (g * (2 * c * c + 2 * n * c) if null_interference else 0)
        chunk = max(1, MAX_ELEMENTS // max(1, per_draw))
        overlaps, shares = [], []
        for i in range(0, draws, chunk):
            p = perms[i:i + chunk]                                                          # (d, N)
            dealt = torch.where(flat[None] >= 0, p[:, flat.clamp_min(0)], start)             # (d, G, n)
            with _few_threads(pool.device, max(min(n, h), g * r)):
                o, _, s = _statistics(pool[dealt.to(pool.device)], r, null_interference)
            overlaps.append(o.cpu())
            if s is not None:
                shares.append(s.cpu())
        null_overlap = torch.cat(overlaps).double().numpy()
        null_share = torch.cat(shares).double().numpy() if shares else None                  # (D, G)
    out["overlap"] = _summary(float(obs_overlap[0]), null_overlap, level, "")
    if obs_share is None:
        why = (f"interference needs ~{work:.1e} flops for {g} experts of rank {r} (> {MAX_NULL_WORK:.0e}); "
               "skipped — lower rank or measure fewer experts")
        out["interference"] = {**_summary(None, None, level, why), "others_can_fill": (g - 1) * r >= h}
        for e in taking:
            experts[e]["reason"] = why
        return out
    shares_obs = obs_share[0].double().cpu().numpy()
    for i, e in enumerate(taking):
        experts[e]["interference"] = _num(shares_obs[i])
        if null_share is not None:
            experts[e]["null_interference"] = _num(null_share[:, i].mean())
            experts[e]["interference_p"] = permutation_pvalue(float(shares_obs[i]), null_share[:, i], "less")
    note = "" if null_share is not None or not draws else (
        f"the interference null needs ~{(draws + 1) * work:.1e} flops (> {MAX_NULL_WORK:.0e}); skipped — lower "
        "draws or rank")
    out["interference"] = {**_summary(float(shares_obs.mean()), None if null_share is None else null_share.mean(1),
                                      level, note), "others_can_fill": (g - 1) * r >= h}
    return out


def _check_geometry(*, rank, energy, draws, level) -> None:
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise ValueError(f"rank must be None (chosen by energy) or a positive integer; got rank={rank!r}")
    if not isinstance(energy, (int, float)) or isinstance(energy, bool) or not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must lie in (0, 1]; got energy={energy!r}")
    if not isinstance(draws, int) or isinstance(draws, bool) or (draws != 0 and draws < MIN_DRAWS):
        raise ValueError(f"draws must be 0 (no null) or an integer >= {MIN_DRAWS} (a finite 95% interval); "
                         f"got draws={draws!r}")
    if not isinstance(level, float) or not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got level={level!r}")


