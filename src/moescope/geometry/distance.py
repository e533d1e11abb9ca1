r"""Distances between random points on S^{d-1}: the exact law and the loss of contrast.

For independent uniform x, y on S^{d-1}, ||x − y||² = 2 − 2 cos θ, and with
c = cos θ ~ f_d (see :mod:`moescope.geometry.sphere`) the substitution c = 1 − 2u shows

.. math:: \frac{\lVert x - y \rVert^2}{4} \sim \mathrm{Beta}\!\left(\tfrac{d-1}{2}, \tfrac{d-1}{2}\right),

so E||x−y|| = 2 B(1/2, d−1) / B(1/2, (d−1)/2) and E||x−y||² = 2: the distances pile up
at sqrt(2) with spread ~ 1/sqrt(2d). Beyer et al. (1999, "When is nearest neighbor
meaningful?") measure this as the relative contrast (D_max − D_min)/D_min of the distances
from a query to n points, which shrinks like 1/sqrt(d).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import integrate, special

from moescope.geometry._betainc import log_beta_half
from moescope.geometry._check import as_count, as_dim, as_real, scalar_or_array
from moescope.geometry.sphere import cap_mass, coordinate_logpdf, sample_sphere

__all__ = [
    "distance_cdf",
    "distance_mean",
    "distance_pdf",
    "distance_quantile",
    "distance_std",
    "relative_contrast",
    "relative_contrast_mc",
    "relative_contrast_prediction",
]


def distance_pdf(r: object, d: object) -> float | np.ndarray:
    """Density of ||x − y|| at r in [0, 2]: r f_d(1 − r²/2), zero elsewhere."""
    r = as_real(r, name="r")
    d = as_dim(d)
    inside = (r >= 0) & (r <= 2)
    rr = np.where(inside, r, 1.0)
    out = np.where(inside, rr * np.exp(coordinate_logpdf(1.0 - rr**2 / 2.0, d)), 0.0)
    return scalar_or_array(out)


def distance_cdf(r: object, d: object) -> float | np.ndarray:
    """P(||x − y|| <= r) = P(cos θ >= 1 − r²/2) = ``cap_mass(1 − r²/2, d)``."""
    r = as_real(r, name="r")
    rr = np.clip(r, 0.0, 2.0)
    return cap_mass(1.0 - rr**2 / 2.0, d)


def distance_quantile(q: object, d: object) -> float | np.ndarray:
    """The q-quantile of ||x − y||: 2 sqrt(I^{-1}_q((d−1)/2, (d−1)/2))."""
    q = as_real(q, name="q", low=0.0, high=1.0)
    a = (as_dim(d) - 1.0) / 2.0
    return scalar_or_array(2.0 * np.sqrt(special.betaincinv(a, a, q)))


def distance_mean(d: object) -> float | np.ndarray:
    """E||x − y|| = 2 B(1/2, d − 1) / B(1/2, (d − 1)/2); 4/pi for d = 2, 4/3 for d = 3."""
    a = (as_dim(d) - 1.0) / 2.0
    return scalar_or_array(2.0 * np.exp(log_beta_half(2.0 * a) - log_beta_half(a)))


def distance_std(d: object) -> float | np.ndarray:
    """sd ||x − y|| = sqrt(2 − (E||x − y||)²), since E||x − y||² = 2 exactly."""
    mean = np.asarray(distance_mean(d))
    return scalar_or_array(np.sqrt(np.maximum(2.0 - mean**2, 0.0)))


def relative_contrast(distances: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(D_max − D_min) / D_min over the last axis (Beyer et al. 1999, Def. of contrast).

    Args:
        distances: (..., n) distances from a query to n points, n >= 2, all > 0.
    """
    if distances.shape[-1] < 2:
        raise ValueError(f"relative_contrast needs >= 2 distances per query; got shape {tuple(distances.shape)}")
    if isinstance(distances, torch.Tensor):
        d_max, d_min = distances.amax(-1), distances.amin(-1)
    else:
        d_max, d_min = distances.max(-1), distances.min(-1)
    if (d_min <= 0).any():
        raise ValueError("relative_contrast needs distances > 0 (a query coincides with a point)")
    return (d_max - d_min) / d_min


def relative_contrast_mc(
    n_points: int, d: int, trials: int, generator: torch.Generator | np.random.Generator | int | None = None
) -> np.ndarray:
    """Monte Carlo relative contrast: per trial, one uniform query and n uniform points.

    Returns:
        (trials,) float64 array of contrasts.
    """
    n_points = as_count(n_points, name="n_points", minimum=2)
    trials = as_count(trials, name="trials")
    out = np.empty(trials)
    for i in range(trials):
        pts = sample_sphere(n_points + 1, d, generator)
        if isinstance(pts, torch.Tensor):
            dist = torch.linalg.vector_norm(pts[1:] - pts[0], dim=1).double().numpy()
        else:
            dist = np.linalg.norm(pts[1:] - pts[0], axis=1)
        out[i] = relative_contrast(dist)
    return out


def relative_contrast_prediction(n_points: int, d: object) -> float | np.ndarray:
    """Plug-in prediction (E D_max − E D_min) / E D_min from the exact distance law.

    E D_max = int_0^1 Q(v^{1/n}) dv and E D_min = int_0^1 Q(1 − v^{1/n}) dv for the
    distance quantile Q. A ratio of expectations, not the expectation of the ratio; the
    two agree to O(1/d) and both shrink like 1/sqrt(d).
    """
    n = as_count(n_points, name="n_points", minimum=2)
    dims = as_dim(d)

    def one(dim: float) -> float:
        q = lambda v: float(distance_quantile(v, dim))  # noqa: E731
        e_max = integrate.quad(lambda v: q(v ** (1.0 / n)), 0.0, 1.0, limit=200)[0]
        e_min = integrate.quad(lambda v: q(1.0 - v ** (1.0 / n)), 0.0, 1.0, limit=200)[0]
        return (e_max - e_min) / e_min

    return scalar_or_array(np.vectorize(one, otypes=[float])(dims))
