r"""Exact laws of the uniform distribution on the unit sphere S^{d-1} ⊂ R^d.

One coordinate x_1 of a uniform point (equivalently, the cosine between two independent
uniform unit vectors) has density

.. math:: f_d(t) = \frac{(1 - t^2)^{(d-3)/2}}{B(\tfrac12, \tfrac{d-1}{2})}, \qquad t \in [-1, 1],

because x_1^2 ~ Beta(1/2, (d-1)/2). Everything here is a value of that law: the equator
band P(|x_1| <= eps), a polar cap P(x_1 >= t), the cdf, and how many random vectors stay
pairwise nearly orthogonal. All functions take numpy-broadcastable ``t``/``eps`` and ``d``,
return a float for scalar input and an array otherwise, and are accurate to ~1e-13 relative
for d from 2 to beyond 1e7 and masses down to the smallest double (the ``log_*`` variants
go further); see :mod:`moescope.geometry._betainc` for how.

Sources: the Beta law of a sphere coordinate (e.g. Vershynin, *High-Dimensional
Probability*, 2018, sec. 3.3); the cap bound P(x_1 >= t) <= exp(-d t^2 / 2) (Ball, *An
Elementary Introduction to Modern Convex Geometry*, 1997, Lemma 2.2); Welch's bound (Welch,
IEEE Trans. Inf. Theory 1974).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import special

from moescope.geometry._betainc import log1m_square, log_beta_half, log_sphere_tails
from moescope.geometry._check import as_count, as_dim, as_real, scalar_or_array

__all__ = [
    "band_mass",
    "band_quantile",
    "cap_mass",
    "coordinate_cdf",
    "coordinate_logpdf",
    "coordinate_pdf",
    "coordinate_std",
    "log_band_mass",
    "log_cap_mass",
    "log_near_orthogonal_capacity",
    "log_subgaussian_capacity",
    "near_orthogonal_capacity",
    "sample_sphere",
    "welch_capacity",
]


def _tails(t: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log P(|x_1| <= |t|), log P(|x_1| >= |t|)) for |t| clipped to [0, 1]."""
    return log_sphere_tails(np.minimum(np.abs(t), 1.0), (d - 1.0) / 2.0)


def coordinate_logpdf(t: object, d: object) -> float | np.ndarray:
    r"""log f_d(t), the log density of one coordinate (or of a random cosine); −inf off [−1, 1].

    ``(d-3)/2 * log(1 - t^2) - log B(1/2, (d-1)/2)``, with log(1 − t²) formed from an exact
    square so that the factor (d−3)/2 ~ 5e6 does not amplify rounding.
    """
    t = as_real(t, name="t")
    d = as_dim(d)
    t, d = np.broadcast_arrays(t, d)
    inside = np.abs(t) <= 1.0
    log1m = log1m_square(np.where(inside, t, 0.0))
    expo = (d - 3.0) / 2.0
    with np.errstate(invalid="ignore"):
        body = np.where(expo == 0.0, 0.0, expo * log1m)
    out = np.where(inside, body - log_beta_half((d - 1.0) / 2.0), -np.inf)
    return scalar_or_array(out)


def coordinate_pdf(t: object, d: object) -> float | np.ndarray:
    """f_d(t): the density of one coordinate of a uniform point on S^{d-1} (of a random cosine).

    d = 2 gives the arcsine density 1/(pi sqrt(1-t^2)); d = 3 the uniform density 1/2.
    """
    return scalar_or_array(np.exp(coordinate_logpdf(t, d)))


def coordinate_std(d: object) -> float | np.ndarray:
    """Standard deviation of a coordinate, exactly 1/sqrt(d) (E[x_1^2] = 1/d by symmetry)."""
    return scalar_or_array(1.0 / np.sqrt(as_dim(d)))


def log_cap_mass(t: object, d: object) -> float | np.ndarray:
    """log P(x_1 >= t): finite far below the smallest double (e.g. about −1.2e5 at t=0.5, d=1e6)."""
    t = as_real(t, name="t")
    d = as_dim(d)
    log_band, log_caps = _tails(t, d)
    positive = np.log(0.5) + log_caps            # t >= 0: half of the two caps
    negative = np.log(0.5) + np.log1p(np.exp(log_band))  # t < 0: 1/2 + band/2
    return scalar_or_array(np.where(t >= 0, positive, negative))


def cap_mass(t: object, d: object) -> float | np.ndarray:
    """P(x_1 >= t), the mass of the polar cap above height t (the "pole" for t near 1).

    Equivalently the probability that two independent uniform unit vectors have cosine >= t.
    """
    return scalar_or_array(np.exp(log_cap_mass(t, d)))


def coordinate_cdf(t: object, d: object) -> float | np.ndarray:
    """P(x_1 <= t); by symmetry ``cap_mass(-t, d)``."""
    t = as_real(t, name="t")
    return cap_mass(-t, d)


def log_band_mass(eps: object, d: object) -> float | np.ndarray:
    """log P(|x_1| <= eps) for eps in [0, 1]."""
    eps = as_real(eps, name="eps", low=0.0, high=1.0)
    log_band, _ = _tails(eps, as_dim(d))
    return scalar_or_array(log_band)


def band_mass(eps: object, d: object) -> float | np.ndarray:
    """P(|x_1| <= eps): the share of the sphere within eps of the equator x_1 = 0.

    ``band_mass(eps, d) + 2 * cap_mass(eps, d) == 1``. In d = 1000, ``band_mass(0.1, 1000)``
    is 0.99846: almost all of the sphere lies near any equator.
    """
    return scalar_or_array(np.exp(log_band_mass(eps, d)))


def band_quantile(p: object, d: object) -> float | np.ndarray:
    """The eps with band_mass(eps, d) = p: the p-quantile of |x_1| (of |cos θ|).

    From ``scipy.special.betaincinv(1/2, (d-1)/2, p)``, then one Newton step on the exact
    :func:`band_mass` so the two agree to rounding.
    """
    p = as_real(p, name="p", low=0.0, high=1.0)
    d = as_dim(d)
    eps = np.sqrt(special.betaincinv(0.5, (d - 1.0) / 2.0, p))
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (np.asarray(band_mass(eps, d)) - p) / (2.0 * np.asarray(coordinate_pdf(eps, d)))
    ok = np.isfinite(step) & (p > 0) & (p < 1)
    return scalar_or_array(np.clip(np.where(ok, eps - step, eps), 0.0, 1.0))


def sample_sphere(
    n: int,
    d: int,
    generator: np.random.Generator | torch.Generator | int | None = None,
    *,
    dtype: torch.dtype | np.dtype | None = None,
) -> np.ndarray | torch.Tensor:
    """n independent uniform points on S^{d-1}: normalised standard Gaussian vectors.

    Args:
        n: number of points.
        d: ambient dimension (>= 2).
        generator: a ``torch.Generator`` (returns a torch tensor), a numpy ``Generator``
            or an int seed (returns a numpy array), or None (fresh numpy entropy).
        dtype: output dtype; float64 for numpy and torch's default dtype otherwise.

    Returns:
        (n, d) array of unit rows.
    """
    n = as_count(n, name="n", minimum=0)
    d = int(as_dim(d))
    if isinstance(generator, torch.Generator):
        x = torch.randn(n, d, generator=generator, dtype=dtype or torch.get_default_dtype())
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        while bool((norms == 0).any()):  # probability zero, but never divide by it
            zero = (norms == 0).squeeze(1)
            x[zero] = torch.randn(int(zero.sum()), d, generator=generator, dtype=x.dtype)
            norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return x / norms
    if generator is None or isinstance(generator, (int, np.integer)):
        generator = np.random.default_rng(generator)
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            "generator must be a torch.Generator, a numpy Generator, an int seed or None; "
            f"got {type(generator).__name__}"
        )
    x = generator.standard_normal((n, d), dtype=dtype or np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    while (norms == 0).any():
        zero = norms[:, 0] == 0
        x[zero] = generator.standard_normal((int(zero.sum()), d), dtype=x.dtype)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / norms


def log_near_orthogonal_capacity(eps: object, d: object, delta: float = 0.01) -> float | np.ndarray:
    r"""Natural log of N(eps, d, delta), the random near-orthogonality capacity.

    N is the largest count of independent uniform unit vectors in R^d whose pairwise
    cosines all satisfy |cos| <= eps with probability >= 1 − delta *by the union bound on
    the exact cosine tail*: N(N−1)/2 · P(|cos| > eps) <= delta, so
    N = (1 + sqrt(1 + 8 delta / p)) / 2 with p = 2 cap_mass(eps, d). Computed in log space
    (N exceeds 1e300 for moderate eps·sqrt(d)). Floor it for an integer count.
    """
    eps = as_real(eps, name="eps", low=0.0, high=1.0)
    d = as_dim(d)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1); got delta={delta!r}")
    _, log_p = _tails(eps, d)  # log P(|cos| >= eps)
    log_ratio = np.log(8.0 * delta) - log_p
    log_root = 0.5 * np.logaddexp(0.0, log_ratio)
    return scalar_or_array(np.logaddexp(0.0, log_root) - np.log(2.0))


def near_orthogonal_capacity(eps: object, d: object, delta: float = 0.01) -> float | np.ndarray:
    """floor(N) of :func:`log_near_orthogonal_capacity`, as a float (inf when it overflows)."""
    with np.errstate(over="ignore"):
        return scalar_or_array(np.floor(np.exp(np.asarray(log_near_orthogonal_capacity(eps, d, delta)))))


def log_subgaussian_capacity(eps: object, d: object, delta: float = 0.01) -> float | np.ndarray:
    r"""log of the Johnson–Lindenstrauss-style guarantee sqrt(delta)·exp(d eps^2 / 4).

    From the cap bound P(|cos| > eps) <= 2 exp(−d eps²/2) put into the same union bound;
    it is always below the exact :func:`log_near_orthogonal_capacity`.
    """
    eps = as_real(eps, name="eps", low=0.0, high=1.0)
    d = as_dim(d)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1); got delta={delta!r}")
    return scalar_or_array(0.5 * np.log(delta) + d * eps**2 / 4.0)


def welch_capacity(eps: object, d: object) -> float | np.ndarray:
    r"""Largest N that Welch's bound allows for unit vectors in R^d with coherence <= eps.

    Welch: max |cos| >= sqrt((N − d) / (d (N − 1))) for N > d, so coherence eps permits
    N <= d (1 − eps²) / (1 − d eps²) while d eps² < 1, and places no limit (inf) beyond.
    An upper bound for *any* arrangement, random or designed.
    """
    eps = as_real(eps, name="eps", low=0.0, high=1.0)
    d = as_dim(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.floor(d * (1.0 - eps**2) / (1.0 - d * eps**2))
    return scalar_or_array(np.where(d * eps**2 < 1.0, np.maximum(bound, d), np.inf))
