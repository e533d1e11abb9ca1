r"""Gromov's δ-hyperbolicity of a finite metric space, and the Gaussian cloud it is held against.

The four-point condition (Gromov 1987): for any four points x, y, z, w form the three pair sums

.. math:: S_1 = d(x,y) + d(z,w),\quad S_2 = d(x,z) + d(y,w),\quad S_3 = d(x,w) + d(y,z);

the space is δ-hyperbolic when, for every quadruple, the largest sum exceeds the middle one by at
most 2δ. So δ = max over quadruples of (largest − middle)/2: 0 on a tree metric, √2 − 1 on the
corners of a unit square, k on the 4k-cycle (four equally spaced vertices). The equivalent form with
a base point w uses the Gromov product :math:`(x|y)_w = \tfrac12(d(x,w) + d(y,w) - d(x,y))`:

.. math:: \delta_w = \max_{x,y,z}\ \min\{(x|z)_w, (z|y)_w\} - (x|y)_w
    = \max_{x,y}\ \big[(G_w \otimes G_w)_{xy} - (G_w)_{xy}\big],

with :math:`(A \otimes B)_{xy} = \max_z \min(A_{xz}, B_{zy})` the (max, min) matrix product
(Fournier, Ismail & Vigneron 2015). δ_w is the maximum over the quadruples that contain w, hence
δ = max_w δ_w exactly (:func:`four_point_delta` with ``base=None``, n max-min products, O(n⁴)); one
base point gives δ_w ≤ δ ≤ 2 δ_w, which is what Khrulkov et al. (2020) and HypLoRA's
``utils/delta_hyperbolicity.py`` report (base point 0).

δ scales with the metric, so it is compared through the **relative** δ = 2δ / diam (Khrulkov et
al. 2020; HypLoRA, Yang et al. 2024, §3): 0 for a tree, and about 0.2–0.3 for Gaussian clouds in
tens of dimensions. :func:`matched_gaussian` draws the null cloud: the same number of points, the
same mean and the same (sample) covariance as the data, so any difference in relative δ comes from
shape beyond second moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DeltaResult", "four_point_delta", "matched_gaussian", "relative_delta"]

# Rows of the (max, min) product formed at once: a (chunk, n, n) float64 block, 32 MB at n = 512.
_CHUNK_ELEMENTS = 1 << 22


def _check_distances(dist: np.ndarray | torch.Tensor) -> torch.Tensor:
    d = torch.as_tensor(np.asarray(dist) if not isinstance(dist, torch.Tensor) else dist.detach(),
                        dtype=torch.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"dist must be a square (n, n) distance matrix; got shape {tuple(d.shape)}")
    if d.shape[0] < 4:
        raise ValueError(f"the four-point condition needs n >= 4 points; got n={d.shape[0]}")
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise ValueError("dist must hold finite non-negative distances")
    tol = 1e-9 * max(1.0, float(d.abs().max()))
    if float((d - d.T).abs().max()) > tol or float(d.diagonal().abs().max()) > tol:
        raise ValueError("dist must be symmetric with a zero diagonal")
    return d


def _maxmin_excess(g: torch.Tensor) -> float:
    """max_{x,y} [(G ⊗ G)_{xy} − G_{xy}] for one Gromov-product matrix G (n, n)."""
    n = g.shape[0]
    rows = max(1, _CHUNK_ELEMENTS // (n * n))
    best = -np.inf
    for i in range(0, n, rows):
        # G is symmetric, so min(G_xz, G_zy) = min(G_xz, G_yz): reduce over the last (contiguous) axis z
        block = torch.minimum(g[i:i + rows, None, :], g[None, :, :]).amax(dim=-1)  # (rows, n)
        best = max(best, float((block - g[i:i + rows]).max()))
    return best


def four_point_delta(dist: np.ndarray | torch.Tensor, *, base: int | None = None) -> float:
    """Gromov's four-point δ of a finite metric given by its distance matrix (n, n), n >= 4.

    ``base=None``: the exact δ, the maximum over every quadruple (every base point's max-min
    product; O(n⁴)). ``base=w``: δ_w, the maximum over the quadruples
    containing point w (O(n³)), which bounds δ_w ≤ δ ≤ 2δ_w.
    """
    d = _check_distances(dist)
    n = d.shape[0]
    if base is not None and not (isinstance(base, int) and not isinstance(base, bool) and 0 <= base < n):
        raise ValueError(f"base must be None (all base points) or a point index in [0, {n}); got base={base!r}")
    best = 0.0
    for w in range(n) if base is None else (base,):
        g = 0.5 * (d[w][None, :] + d[:, w][:, None] - d)                            # (n, n) Gromov products at w
        best = max(best, _maxmin_excess(g))
    return max(best, 0.0)


@dataclass(frozen=True)
class DeltaResult:
    """δ of a point cloud: ``delta`` (absolute), ``diameter``, ``relative`` = 2δ/diameter, ``n`` points."""

    delta: float
    diameter: float
    relative: float
    n: int


def relative_delta(points: np.ndarray | torch.Tensor, *, base: int | None = None) -> DeltaResult:
    """Four-point δ of ``points`` (n, d) under the Euclidean metric, and the relative δ = 2δ/diam."""
    x = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points.detach(),
                        dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"points must be (n, d); got shape {tuple(x.shape)}")
    dist = torch.cdist(x, x)
    dist = 0.5 * (dist + dist.T)
    dist.fill_diagonal_(0.0)
    delta = four_point_delta(dist, base=base)
    diam = float(dist.max())
    return DeltaResult(delta, diam, 2.0 * delta / diam if diam > 0 else 0.0, int(x.shape[0]))


def matched_gaussian(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r"""A Gaussian cloud (n, d) with the sample mean and covariance of ``points`` (n, d).

    Drawn as :math:`\bar x + g\,(X - \bar x)/\sqrt{n-1}` with g (n, n) standard normal: its
    covariance is exactly the sample covariance :math:`(X-\bar x)^\top (X-\bar x)/(n-1)`, even when
    that is singular (n ≤ d), with no factorisation.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"points must be (n, d) with n >= 2; got shape {x.shape}")
    mean = x.mean(axis=0)
    g = rng.standard_normal((x.shape[0], x.shape[0]))
    return mean + g @ (x - mean) / np.sqrt(x.shape[0] - 1)
