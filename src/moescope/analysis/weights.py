r"""Weight geometry of an MoE checkpoint: router centroids and expert input subspaces.

Everything is held against an exact null model of *independent, isotropic* weights (what an
untrained, i.i.d. Gaussian initialisation gives), so a number far from its null is structure
that training put there. The checkpoint is streamed from safetensors by
:mod:`moescope.analysis.checkpoint`: only one expert matrix and the per-expert bases are in
memory at a time, the model is never built.

Router centroids (rows c_e of the (E, H) router, unit vectors u_e = c_e / ||c_e||):

* pairwise cosines u_a·u_b against the exact law of the cosine between independent uniform
  unit vectors in R^H, :func:`moescope.geometry.coordinate_cdf` (x² ~ Beta(1/2, (H−1)/2)):
  mean |cos| against E|cos| = Γ(H/2) / (√π Γ((H+1)/2)), the Kolmogorov–Smirnov statistic and
  p-value, and the share outside the null's 95% band |cos| <= ``band_quantile(0.95, H)``. The
  E(E−1)/2 cosines are pairwise independent under the null (given u_a, u_a·u_b and u_a·u_c
  are independent), not jointly, so the KS p-value is approximate for small E.
* spread: the mean resultant length R̄ = ||(1/E) Σ u_e|| (Mardia & Jupp, *Directional
  Statistics*, 2000, ch. 9–10; the Rayleigh test of uniformity is built on it). Exactly, under the null,
  E[R̄²] = 1/E and Var[R̄²] = 2(E−1) / (E³ H) (the cross terms 2 Σ_{a<b} u_a·u_b are
  uncorrelated with variance 1/H each), so R̄ ≈ 1/√E and z = (R̄² − 1/E) / sd. A shared
  direction in all centroids makes R̄ large.
* participation ratio of the Gram matrix G = U Uᵀ of the unit centroids,
  PR = (tr G)² / tr G² = E² / (E + Σ_{a≠b} cos²_ab) (the standard participation ratio of the
  eigenvalues, e.g. Gao et al. 2017, "A theory of multineuronal dimensionality"): min(E, H)
  for orthogonal centroids, 1 for collinear ones, E / (1 + (E−1)/H) to first order under the null.

Expert input subspaces: for each expert the top-r right singular vectors of its input
projection W_e = [gate; up] (2I × H), i.e. the r input directions it reads most strongly.
r is the smallest rank that captures ``energy`` of ||W_e||_F² (default 50%), capped at
``max_rank`` (default 128) and at H/2, and one r per layer (the median over experts, rounded
down) so that all pairs compare equal dimensions. Why these defaults: 50% keeps the dominant
half of what an expert reads; the cap bounds the randomized SVD's cost per expert at
Mixtral-8x7B scale (cost ∝ r; ``moescope bench analyze`` times the pass) and, with r <= H/2,
keeps r + r <= H so that two subspaces are never forced to intersect (above H/2 every pair
would share 2r − H dimensions whatever the training did).
A flat spectrum needs many directions (an i.i.d. 28672×4096 matrix needs 1426, 35% of H, for
50%), so at scale r is often the cap; the results report each expert's captured energy at r,
which makes that visible. Large matrices use ``torch.svd_lowrank`` (Halko, Martinsson & Tropp
2011, Alg. 4.4, randomized subspace iteration: r + 8 columns, ``niter`` power iterations);
small ones an exact SVD. The randomized subspace is approximate where the spectrum decays
slowly: for the top 32 of a 7168×1024 matrix (same r/H as 128 of 4096), mean cos² to the exact
subspace was 0.74 / 0.86 / 0.94 at niter 1 / 2 / 3 for σ_i ∝ i^−0.3 and 0.90 / 0.96 / 0.98
for i^−0.6 (each power iteration costs two more passes over W). That blurs planted structure
a little but never biases the null: the output of the algorithm on an isotropic W is still a
uniformly random subspace, by rotation invariance.

* principal angles θ_1..θ_r between every pair (batched
  :func:`moescope.geometry.principal_angles`), Σ cos²θ_i against the random-subspace null
  E = r s / H with its exact variance (:func:`~moescope.geometry.random_overlap_var`), a
  z-score per pair, and the Grassmann distance ||θ||₂. For the layer mean over P pairs,
  Var = var / P exactly: under the null the overlaps of two pairs sharing an expert are
  uncorrelated (E[tr P_a P_b | P_a] = rs/H does not depend on P_a).
* shared expert(s) against each routed expert, by the same measures.
* router–expert alignment: the share s_{e,f} = ||Q_fᵀ c_e||² / ||c_e||² of router row e inside
  expert f's subspace; s_{e,e} is the alignment of an expert with its own centroid, the
  off-diagonal s_{e,f} the baseline. Null: Beta(r/2, (H−r)/2), mean r/H, variance
  2r(H−r)/(H²(H+2)); the E(E−1) off-diagonal shares are pairwise uncorrelated under it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from scipy import special, stats
from torch import Tensor

from moescope.analysis.checkpoint import DiskMoELayer, open_checkpoint
from moescope.geometry import (
    band_quantile,
    coordinate_cdf,
    principal_angles,
    random_overlap_mean,
    random_overlap_var,
)
from moescope.models.view import MoELayerView

__all__ = [
    "DEFAULT_ENERGY",
    "DEFAULT_MAX_RANK",
    "DEFAULT_NITER",
    "alignment_geometry",
    "cosine_law_test",
    "mean_abs_cos_null",
    "overlap_zscore",
    "router_geometry",
    "subspace_geometry",
    "top_subspace",
    "weight_geometry",
]

DEFAULT_ENERGY = 0.5     # share of ||W||_F^2 the subspace must capture: the dominant half of what an expert reads
DEFAULT_MAX_RANK = 128   # randomized-SVD cost is linear in r; 128 keeps a Mixtral-8x7B layer under a minute on 2 cores
DEFAULT_NITER = 2        # power iterations: Halko et al. (2011, sec. 4.5) find q = 1 or 2 usually enough
OVERSAMPLE = 8           # extra random columns of the range finder (Halko et al. 2011, sec. 4.2: 5-10)
EXACT_NUMEL = 1 << 22    # below 4M entries an exact float64 SVD is cheaper than worrying about accuracy
SVD_METHODS = ("auto", "exact", "randomized")
MATRIX_EXPERTS = 64      # E×E matrices go into the results up to this E (DeepSeek-V3's 256 would make ~100 MB of JSON)
TOP_PAIRS = 10           # the most-overlapping expert pairs listed per layer, whatever E


def _num(x: float | np.floating | Tensor | None) -> float | None:
    """A JSON-ready float; None for NaN/inf (JSON has neither)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _matrix(m: np.ndarray | Tensor, diagonal: float | None = ...) -> list[list[float | None]]:
    m = np.asarray(m, dtype=np.float64)
    out = [[_num(v) for v in row] for row in m]
    if diagonal is not ...:
        for i in range(min(m.shape)):
            out[i][i] = diagonal
    return out


# --------------------------------------------------------------------------- router centroids


def mean_abs_cos_null(d: int) -> float:
    """E|cos| = Γ(d/2) / (√π Γ((d+1)/2)) for two independent uniform unit vectors in R^d.

    From the density f_d(t) = (1 − t²)^{(d−3)/2} / B(1/2, (d−1)/2):
    E|t| = 2 ∫_0^1 t (1 − t²)^{(d−3)/2} dt / B = 2 / ((d − 1) B(1/2, (d−1)/2)).
    """
    return float(np.exp(special.gammaln(d / 2) - special.gammaln((d + 1) / 2)) / math.sqrt(math.pi))


def cosine_law_test(cos: np.ndarray, d: int) -> dict:
    """Cosines between centroids against the exact cosine law of uniform unit vectors in R^d.

    Args:
        cos: (n,) off-diagonal cosines (each pair once).
        d: the ambient dimension H.

    Returns:
        mean_abs_cos, null_mean_abs_cos, max_abs_cos, ks_stat, ks_pvalue, band95 (the null's
        0.95 quantile of |cos|), share_outside_band (0.05 under the null).
    """
    cos = np.asarray(cos, dtype=np.float64).ravel()
    if cos.size == 0:
        raise ValueError("need at least two centroids (one pair) to compare cosines with the null")
    ks = stats.kstest(cos, lambda t: np.asarray(coordinate_cdf(np.clip(t, -1.0, 1.0), d)))
    band = float(band_quantile(0.95, d))
    return {
        "mean_abs_cos": _num(np.abs(cos).mean()),
        "null_mean_abs_cos": mean_abs_cos_null(d),
        "max_abs_cos": _num(np.abs(cos).max()),
        "ks_stat": _num(ks.statistic),
        "ks_pvalue": _num(ks.pvalue),
        "band95": band,
        "share_outside_band": _num((np.abs(cos) > band).mean()),
    }


def router_geometry(weight: Tensor, *, matrices: bool = True) -> dict:
    """Geometry of the router rows (the expert centroids) against the uniform-sphere null.

    Args:
        weight: (E, H) router matrix, E >= 2.

    Returns:
        JSON-ready dict: ``cosine`` (E×E, only with ``matrices``), ``row_norm_mean``/``row_norm_cv``, the
        :func:`cosine_law_test` entries, ``resultant_length`` R̄ with ``null_resultant_length``
        1/√E and ``resultant_z`` (of R̄²), ``participation_ratio`` with its null and its maximum.
    """
    if weight.ndim != 2 or weight.shape[0] < 2:
        raise ValueError(f"router weight must be (E, H) with E >= 2; got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float64)
    e, h = w.shape
    norms = torch.linalg.vector_norm(w, dim=1)
    if bool((norms == 0).any()):
        raise ValueError(f"router rows {torch.nonzero(norms == 0).ravel().tolist()} are zero: no direction")
    u = w / norms[:, None]
    gram = (u @ u.T).clamp(-1.0, 1.0)                                   # (E, E)
    iu = torch.triu_indices(e, e, offset=1)
    cos = gram[iu[0], iu[1]].numpy()
    r2 = float(u.mean(0).square().sum())
    r2_sd = math.sqrt(2.0 * (e - 1) / (e**3 * h))
    pr = e**2 / float(gram.square().sum())
    return {
        "num_experts": e,
        "hidden": h,
        "cosine": _matrix(gram) if matrices else None,
        "row_norm_mean": _num(norms.mean()),
        "row_norm_cv": _num(norms.std(unbiased=False) / norms.mean()),
        **cosine_law_test(cos, h),
        "resultant_length": math.sqrt(r2),
        "null_resultant_length": 1.0 / math.sqrt(e),
        "resultant_z": _num((r2 - 1.0 / e) / r2_sd),
        "participation_ratio": pr,
        "null_participation_ratio": e / (1.0 + (e - 1) / h),
        "max_participation_ratio": float(min(e, h)),
    }


# --------------------------------------------------------------------------- expert subspaces


def top_subspace(w: Tensor, q: int, *, method: str = "auto", niter: int = DEFAULT_NITER,
                 seed: int = 0) -> tuple[Tensor, np.ndarray]:
    """Top-q right singular vectors of W and the share of ||W||_F² their prefixes capture.

    Args:
        w: (m, H) matrix (an expert's [gate; up]).
        q: number of singular vectors, 1 <= q <= min(m, H).
        method: ``exact`` (``torch.linalg.svd`` in float64), ``randomized``
            (``torch.svd_lowrank`` with q + 8 columns and ``niter`` power iterations, in W's
            dtype) or ``auto`` (exact below 4M entries or when q is close to min(m, H)).
        seed: seeds the randomized range finder, so results are reproducible.

    Returns:
        basis (H, q) with orthonormal columns, and captured (q,) with
        captured[k] = Σ_{i<=k} σ_i² / ||W||_F², non-decreasing in [0, 1].
    """
    if w.ndim != 2:
        raise ValueError(f"W must be a matrix (m, H); got shape {tuple(w.shape)}")
    full = min(w.shape)
    if not 1 <= q <= full:
        raise ValueError(f"q must lie in [1, min(m, H)] = [1, {full}]; got q={q}")
    if method not in SVD_METHODS:
        raise ValueError(f"method must be one of {', '.join(SVD_METHODS)}; got method={method!r}")
    if method == "auto":
        method = "exact" if w.numel() <= EXACT_NUMEL or q + OVERSAMPLE >= full // 2 else "randomized"
    if method == "exact":
        _, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
        total = float(s.square().sum())
        basis = vh[:q].T
    else:
        # In W's own dtype: a float64 norm would copy W (940 MB for a Mixtral-8x7B expert).
        total = float(torch.linalg.vector_norm(w)) ** 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, s, v = torch.svd_lowrank(w, q=min(q + OVERSAMPLE, full), niter=niter)
        basis = v[:, :q]
    if total == 0.0:
        raise ValueError("W is zero: it has no input subspace")
    captured = np.cumsum(s[:q].to(torch.float64).square().numpy()) / total
    return basis.contiguous(), np.minimum(captured, 1.0)


def _rank_for(captured: np.ndarray, energy: float, cap: int) -> tuple[int, bool]:
    """Smallest r with captured[r-1] >= energy, capped; and whether the cap decided it."""
    hit = np.nonzero(captured >= energy)[0]
    if hit.size == 0 or hit[0] + 1 > cap:
        return cap, True
    return int(hit[0]) + 1, False


def overlap_zscore(sum_cos2: object, r: int, s: int, d: int, n: int = 1) -> np.ndarray:
    """z = (mean of n overlaps Σcos²θ − rs/d) / sqrt(Var/n) under the random-subspace null.

    Valid for a mean over pairwise-uncorrelated overlaps (all pairs of independent Haar
    subspaces are). A wrong ``d`` shifts the null mean rs/d and the z-scores with it.
    """
    mean, var = random_overlap_mean(r, s, d), random_overlap_var(r, s, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(sum_cos2, dtype=np.float64) - mean) / np.sqrt(var / n)


def _angles(a: Tensor, b: Tensor, chunk_elems: int = 1 << 24) -> Tensor:
    """principal_angles over the batch of pairs (P, H, r) × (P, H, s), in chunks to bound memory."""
    step = max(1, chunk_elems // (a.shape[-2] * max(a.shape[-1], b.shape[-1])))
    if a.shape[0] == 1 and b.shape[0] > 1:
        return torch.cat([principal_angles(a, b[i:i + step]) for i in range(0, b.shape[0], step)])
    return torch.cat([principal_angles(a[i:i + step], b[i:i + step]) for i in range(0, a.shape[0], step)])


def subspace_geometry(bases: Tensor, *, matrices: bool = True) -> dict:
    """Pairwise principal angles of E expert subspaces against the random-subspace null.

    Args:
        bases: (E, H, r) orthonormal bases, E >= 2.

    Returns:
        JSON-ready dict: ``mean_cos2`` and ``grassmann`` (E×E), ``overlap_z`` (E×E, None on the
        diagonal; the three only with ``matrices``), ``top_pairs`` (the pairs of largest z:
        [i, j, mean cos², z]), and the layer summary over the P = E(E−1)/2 pairs: ``mean_sum_cos2``,
        ``null_sum_cos2`` (r²/H), ``null_sum_cos2_sd``, ``z``, ``ratio_to_null``,
        ``mean_cos2_pairs`` (null r/H), ``max_mean_cos2``, ``mean_grassmann``,
        ``min_grassmann`` (max possible: √r·π/2).
    """
    e, h, r = bases.shape
    if e < 2:
        raise ValueError(f"need at least two experts to compare subspaces; got E={e}")
    iu = torch.triu_indices(e, e, offset=1)
    theta = _angles(bases[iu[0]], bases[iu[1]]).to(torch.float64)       # (P, r)
    sum_cos2 = torch.cos(theta).square().sum(-1).numpy()                 # (P,)
    dist = theta.square().sum(-1).sqrt().numpy()
    mc2, gd, z = np.eye(e), np.zeros((e, e)), np.zeros((e, e))
    zp = overlap_zscore(sum_cos2, r, r, h)
    for k, (i, j) in enumerate(zip(iu[0].tolist(), iu[1].tolist(), strict=True)):
        mc2[i, j] = mc2[j, i] = sum_cos2[k] / r
        gd[i, j] = gd[j, i] = dist[k]
        z[i, j] = z[j, i] = zp[k]
    null = float(random_overlap_mean(r, r, h))
    top = np.argsort(-zp, kind="stable")[:TOP_PAIRS]
    return {
        "rank": r,
        "num_pairs": len(sum_cos2),
        "mean_cos2": _matrix(mc2) if matrices else None,
        "grassmann": _matrix(gd) if matrices else None,
        "overlap_z": _matrix(z, diagonal=None) if matrices else None,
        "top_pairs": [[int(iu[0, k]), int(iu[1, k]), _num(sum_cos2[k] / r), _num(zp[k])] for k in top],
        "mean_sum_cos2": _num(sum_cos2.mean()),
        "null_sum_cos2": null,
        "null_sum_cos2_sd": math.sqrt(float(random_overlap_var(r, r, h))),
        "z": _num(overlap_zscore(sum_cos2.mean(), r, r, h, n=len(sum_cos2))),
        "ratio_to_null": _num(sum_cos2.mean() / null),
        "mean_cos2_pairs": _num(sum_cos2.mean() / r),
        "null_mean_cos2": r / h,
        "max_mean_cos2": _num(sum_cos2.max() / r),
        "mean_grassmann": _num(dist.mean()),
        "min_grassmann": _num(dist.min()),
        "max_grassmann_possible": math.sqrt(r) * math.pi / 2,
    }


def _shares(router: Tensor, bases: Tensor) -> np.ndarray:
    """s[e, f] = ||Q_fᵀ c_e||² / ||c_e||² for router rows (E, H) and bases (F, H, r): (E, F)."""
    u = router.to(torch.float64)
    u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
    proj = torch.einsum("fhr,eh->efr", bases.to(torch.float64), u)     # (E, F, r)
    return proj.square().sum(-1).numpy()


def alignment_geometry(router: Tensor, bases: Tensor, *, matrices: bool = True) -> dict:
    """How much of each router row lies in its own expert's subspace, against the null r/H.

    Args:
        router: (E, H) router rows c_e.
        bases: (E, H, r) orthonormal bases of the experts' input subspaces.

    Returns:
        JSON-ready dict: ``share`` (E×E, row = router row e, column = subspace f; only with
        ``matrices``),
        ``own_share`` (E,) = diagonal, ``other_share`` (E,) = mean over f ≠ e, the means
        ``mean_own``/``mean_other`` with z-scores ``z_own``/``z_other`` against the null mean
        ``null_share`` = r/H (sd ``null_share_sd`` for one share).
    """
    e, h, r = bases.shape
    if router.shape != (e, h):
        raise ValueError(f"router must be (E, H) = ({e}, {h}) to match the bases; got {tuple(router.shape)}")
    s = _shares(router, bases)
    own = np.diag(s)
    off = ~np.eye(e, dtype=bool)
    other = np.where(off, s, 0.0).sum(1) / max(e - 1, 1)
    mean, var = float(random_overlap_mean(r, 1, h)), float(random_overlap_var(r, 1, h))
    n_off = e * (e - 1)
    return {
        "share": _matrix(s) if matrices else None,
        "own_share": [_num(v) for v in own],
        "other_share": [_num(v) for v in other],
        "mean_own": _num(own.mean()),
        "mean_other": _num(s[off].mean()) if n_off else None,
        "null_share": mean,
        "null_share_sd": math.sqrt(var),
        "z_own": _num((own.mean() - mean) / math.sqrt(var / e)),
        "z_other": _num((s[off].mean() - mean) / math.sqrt(var / n_off)) if n_off else None,
    }


def _shared_geometry(name: str, basis: Tensor, captured: np.ndarray, routed: Tensor, router: Tensor) -> dict:
    """A shared expert's subspace (H, r_s) against each routed subspace (E, H, r) and the router rows."""
    e, h, r = routed.shape
    rs = basis.shape[1]
    theta = _angles(basis[None], routed).to(torch.float64)              # (E, min(r, r_s))
    sum_cos2 = torch.cos(theta).square().sum(-1).numpy()
    null = float(random_overlap_mean(r, rs, h))
    rshare = _shares(router, basis[None])[:, 0]                         # (E,)
    mean, var = float(random_overlap_mean(rs, 1, h)), float(random_overlap_var(rs, 1, h))
    return {
        "name": name,
        "rank": rs,
        "energy_at_rank": _num(captured[rs - 1]),
        "mean_cos2": [_num(v / min(r, rs)) for v in sum_cos2],
        "grassmann": [_num(v) for v in theta.square().sum(-1).sqrt().numpy()],
        "overlap_z": [_num(v) for v in overlap_zscore(sum_cos2, r, rs, h)],
        "mean_sum_cos2": _num(sum_cos2.mean()),
        "null_sum_cos2": null,
        "z": _num(overlap_zscore(sum_cos2.mean(), r, rs, h, n=e)),
        "ratio_to_null": _num(sum_cos2.mean() / null),
        "router_share_mean": _num(rshare.mean()),
        "router_share_null": mean,
        "router_share_z": _num((rshare.mean() - mean) / math.sqrt(var / e)),
    }


# --------------------------------------------------------------------------- the pass


def _select(layers: Iterable[int] | None, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    chosen = []
    for i in layers:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not -n <= i < n:
            raise ValueError(f"layers must be MoE-layer indices in [-{n}, {n}) (the checkpoint has {n} MoE "
                             f"layers); got {i!r}")
        chosen.append(int(i) % n)
    return sorted(set(chosen))


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _layer_geometry(layer: DiskMoELayer, *, rank: int | None, energy: float, max_rank: int, niter: int,
                    svd: str, seed: int, matrices: bool | None, advance) -> dict:
    t0 = time.perf_counter()
    h = layer.hidden
    router = layer.router_weight().to(torch.float64)

    def subspace(w: Tensor, s: int) -> tuple[Tensor, np.ndarray, int]:
        cap = min(w.shape) if rank is not None else min(max_rank, h // 2, min(w.shape))
        if rank is not None and rank > cap:
            raise ValueError(f"rank={rank} exceeds min(2I, H) = {cap} in layer {layer.name}")
        basis, captured = top_subspace(w, rank if rank is not None else cap, method=svd, niter=niter, seed=s)
        return basis, captured, cap

    bases, curves, ranks, capped = [], [], [], []
    for e in range(layer.num_experts):
        w = layer.input_projection(e)                                   # (2I, H) float32, one expert at a time
        basis, captured, cap = subspace(w, seed + e)
        del w
        r_e, hit_cap = (rank, False) if rank is not None else _rank_for(captured, energy, cap)
        bases.append(basis)
        curves.append(captured)
        ranks.append(r_e)
        capped.append(hit_cap)
        advance()
    r = rank if rank is not None else int(np.median(ranks))
    full = matrices if matrices is not None else layer.num_experts <= MATRIX_EXPERTS
    stacked = torch.stack([b[:, :r] for b in bases])                    # (E, H, r)
    del bases
    experts = {
        "rank": r,
        "rank_per_expert": ranks,
        "rank_capped": [bool(c) for c in capped],
        "energy_at_rank": [_num(c[r - 1]) for c in curves],
        **subspace_geometry(stacked, matrices=full),
    }
    shared = []
    for j in range(layer.num_shared):
        w = layer.shared_input_projection(j)
        basis, captured, cap = subspace(w, seed + layer.num_experts + j)
        del w
        r_s = rank if rank is not None else _rank_for(captured, energy, cap)[0]
        shared.append(_shared_geometry(f"shared_{j}", basis[:, :r_s].to(stacked.dtype), captured, stacked, router))
        advance()
    return {
        "index": layer.index,
        "name": layer.name,
        "block": layer.block,
        "num_experts": layer.num_experts,
        "hidden": h,
        "router": router_geometry(router, matrices=full),
        "experts": experts,
        "alignment": alignment_geometry(router, stacked, matrices=full),
        "shared": shared,
        "seconds": time.perf_counter() - t0,
    }


def weight_geometry(path: str | Path, *, layers: Iterable[int] | None = None, rank: int | None = None,
                    energy: float = DEFAULT_ENERGY, max_rank: int = DEFAULT_MAX_RANK, niter: int = DEFAULT_NITER,
                    svd: str = "auto", seed: int = 0, matrices: bool | None = None,
                    progress: bool = True) -> dict:
    """Router-centroid and expert-subspace geometry of every MoE layer of a checkpoint on disk.

    Args:
        path: checkpoint directory (``config.json`` + safetensors, single or sharded).
        layers: MoE-layer indices to analyse (0-based among the MoE layers; negative counts
            from the end); None for all.
        rank: fixed subspace dimension r for every expert (and shared expert); None chooses
            it by ``energy`` per expert, capped at ``max_rank`` and H/2, then the layer median.
        energy: share of ||W_e||_F² the subspace must capture, in (0, 1].
        max_rank: cap on the energy-chosen r (cost of the randomized SVD is linear in it).
        niter: power iterations of the randomized SVD.
        svd: ``auto``, ``exact`` or ``randomized`` (see :func:`top_subspace`).
        seed: seeds the randomized SVD (expert e uses seed + e).
        matrices: put the E×E matrices (cosines, overlaps, distances, shares) into the results;
            None: only for layers with E <= 64 (summaries and ``top_pairs`` are always there).
        progress: show a progress bar over experts on stderr.

    Returns:
        JSON-ready dict: ``path``, ``model_type``, ``num_moe_layers``, ``settings``, and
        ``layers``: one dict per analysed layer with ``index``, ``name``, ``block``,
        ``num_experts``, ``hidden``, ``router`` (:func:`router_geometry`), ``experts``
        (per-expert ranks and captured energy + :func:`subspace_geometry`), ``alignment``
        (:func:`alignment_geometry`), ``shared`` (per shared expert: overlaps with every
        routed expert and the router rows' share in it, against their nulls) and ``seconds``.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must lie in (0, 1]; got energy={energy!r}")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer or None; got rank={rank!r}")
    if not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer; got max_rank={max_rank!r}")
    if not isinstance(niter, int) or niter < 0:
        raise ValueError(f"niter must be a non-negative integer; got niter={niter!r}")
    if svd not in SVD_METHODS:
        raise ValueError(f"svd must be one of {', '.join(SVD_METHODS)}; got svd={svd!r}")
    ckpt = open_checkpoint(path)
    chosen = [ckpt.layers[i] for i in _select(layers, len(ckpt.layers))]
    results = []
    with _progress(progress) as bar:
        task = bar.add_task("weight geometry", total=sum(lay.num_experts + lay.num_shared for lay in chosen))
        for layer in chosen:
            bar.update(task, description=f"weight geometry {layer.name}")
            results.append(_layer_geometry(layer, rank=rank, energy=energy, max_rank=max_rank, niter=niter, svd=svd,
                                           seed=seed, matrices=matrices, advance=lambda: bar.advance(task)))
    return {
        "path": str(ckpt.path),
        "model_type": ckpt.model_type,
        "num_moe_layers": len(ckpt.layers),
        "settings": {"rank": rank, "energy": energy, "max_rank": max_rank, "niter": niter, "svd": svd,
                     "oversample": OVERSAMPLE, "seed": seed, "matrices": matrices},
        "layers": results,
    }


class _ViewLayer:
    """A live :class:`MoELayerView` behind the interface of a layer read from disk."""

    def __init__(self, view: MoELayerView) -> None:
        self.view = view
        self.hidden, self.num_experts = view.hidden, view.num_experts
        self.index, self.name, self.block = view.index, view.name, view.index
        self.num_shared = len(view.shared)

    def router_weight(self) -> Tensor:
        return self.view.router_weight.detach().float()

    def input_projection(self, e: int) -> Tensor:
        return self.view.expert(e).input_projection().detach().float()

    def shared_input_projection(self, j: int) -> Tensor:
        return self.view.shared[j]().input_projection().detach().float()


def view_geometry(view: MoELayerView, *, rank: int | None = None, energy: float = DEFAULT_ENERGY,
                  max_rank: int = DEFAULT_MAX_RANK, niter: int = DEFAULT_NITER, svd: str = "auto", seed: int = 0,
                  matrices: bool | None = None) -> dict:
    """The per-layer dict of :func:`weight_geometry` for a live model's layer (e.g. the lab's models)."""
    return _layer_geometry(_ViewLayer(view), rank=rank, energy=energy, max_rank=max_rank, niter=niter, svd=svd,
                           seed=seed, matrices=matrices, advance=lambda: None)
