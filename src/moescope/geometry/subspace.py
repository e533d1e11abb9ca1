r"""Principal angles between subspaces, overlap measures, and their random null model.

Principal angles 0 <= θ_1 <= ... <= θ_m <= π/2 (m = min(p, q)) between the column spaces
of A (d×p) and B (d×q) are computed by the sine–cosine method of Björck & Golub (1973) as
refined by Knyazev & Argentati (2002, SIAM J. Sci. Comput. 23(6), Alg. 3.1): with
orthonormal bases Q_A, Q_B,

* cos θ_i are the singular values of Q_A^T Q_B (accurate for large angles),
* sin θ_i are the singular values of Q_B − Q_A Q_A^T Q_B (accurate for small angles),

and each angle is taken from the form that is well conditioned for it (sine below π/4).
Angles of 1e-12 come out to ~1e-16 absolute, where arccos alone returns 0.

The null model (what expert subspaces are held against): for a Haar-random r-dimensional
subspace R and a fixed s-dimensional S of R^d, the overlap Σ cos²θ_i = tr(P_R P_S) has

.. math:: E = \frac{rs}{d}, \qquad \mathrm{Var} = \frac{2 r s (d - r)(d - s)}{d^2 (d + 2)(d - 1)},

and for d -> ∞ with r/d -> α, s/d -> β the cos²θ_i follow Wachter's law (Wachter 1980;
the free multiplicative convolution of two projections, Collins 2005): on
[λ₋, λ₊], λ± = α + β − 2αβ ± sqrt(4αβ(1−α)(1−β)), density
sqrt((λ₊ − x)(x − λ₋)) / (2π x (1 − x) min(α, β)), plus an atom max(α + β − 1, 0)/min(α, β)
at 1 (forced intersection).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import integrate

from moescope.geometry._check import as_dim, as_real, scalar_or_array

__all__ = [
    "grassmann_distance",
    "mean_cos2",
    "orthonormal_basis",
    "principal_angles",
    "projection_distance",
    "random_overlap_mean",
    "random_overlap_var",
    "random_subspace",
    "wachter_atom",
    "wachter_cdf",
    "wachter_pdf",
    "wachter_support",
]

Array = np.ndarray | torch.Tensor


def _as_tensor(x: Array, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x, dtype=np.float64))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array; got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (..., d, p) with the basis in its columns; got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def orthonormal_basis(a: Array, *, name: str = "A") -> torch.Tensor:
    """Orthonormal basis (…, d, p) of the column space of a full-column-rank (…, d, p) matrix.

    Raises ValueError when p > d or the columns are (numerically) dependent, since the
    angles of a rank-deficient "basis" would silently describe a different subspace.
    """
    a = _as_tensor(a, name)
    d, p = a.shape[-2], a.shape[-1]
    if p == 0 or p > d:
        raise ValueError(f"{name} must have 1 <= p <= d columns; got shape {tuple(a.shape)} (d={d}, p={p})")
    q, r = torch.linalg.qr(a, mode="reduced")
    diag = torch.diagonal(r, dim1=-2, dim2=-1).abs()
    tol = max(d, p) * torch.finfo(a.dtype).eps * diag.amax(-1, keepdim=True)
    if bool((diag <= tol).any()):
        raise ValueError(f"{name} has linearly dependent columns (rank < {p}); pass a full-rank basis")
    return q


def principal_angles(a: Array, b: Array) -> Array:
    """Principal angles between span(A) and span(B), ascending, in radians.

    Args:
        a: (..., d, p) basis of the first subspace (any full-rank columns).
        b: (..., d, q) basis of the second; leading dims broadcast with ``a``.

    Returns:
        (..., min(p, q)) angles in [0, π/2]; numpy in → numpy out.
    """
    as_numpy = isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    qa, qb = orthonormal_basis(a, name="A"), orthonormal_basis(b, name="B")
    if qa.shape[-2] != qb.shape[-2]:
        raise ValueError(f"A and B must live in the same R^d; got d={qa.shape[-2]} and d={qb.shape[-2]}")
    dtype = torch.promote_types(qa.dtype, qb.dtype)
    qa, qb = qa.to(dtype), qb.to(dtype)
    if qa.shape[-1] < qb.shape[-1]:  # angles are symmetric; keep q <= p
        qa, qb = qb, qa
    m = qa.transpose(-2, -1) @ qb                       # (..., p, q)
    cos = torch.linalg.svdvals(m).clamp(0.0, 1.0)       # (..., q) descending
    resid = qb - qa @ m                                 # (..., d, q): the part of B outside A
    sin = torch.linalg.svdvals(resid).flip(-1).clamp(0.0, 1.0)  # ascending, aligned with cos
    theta = torch.where(cos**2 >= 0.5, torch.arcsin(sin), torch.arccos(cos))
    return theta.numpy() if as_numpy else theta


def mean_cos2(a: Array, b: Array) -> Array:
    """Mean of cos²θ_i over the min(p, q) principal angles: 1 for nested, 0 for orthogonal."""
    theta = principal_angles(a, b)
    return (np.cos(theta) ** 2).mean(-1) if isinstance(theta, np.ndarray) else (torch.cos(theta) ** 2).mean(-1)


def projection_distance(a: Array, b: Array) -> Array:
    """||sin θ||₂, the projection (chordal) distance; ||P_A − P_B||_F / sqrt(2) when p = q."""
    theta = principal_angles(a, b)
    if isinstance(theta, np.ndarray):
        return np.sqrt((np.sin(theta) ** 2).sum(-1))
    return torch.sin(theta).square().sum(-1).sqrt()


def grassmann_distance(a: Array, b: Array) -> Array:
    """||θ||₂, the geodesic (arc-length) distance on the Grassmannian (Edelman et al. 1998)."""
    theta = principal_angles(a, b)
    return np.sqrt((theta**2).sum(-1)) if isinstance(theta, np.ndarray) else theta.square().sum(-1).sqrt()


def random_subspace(d: int, r: int, generator: torch.Generator | None = None,
                    *, batch: tuple[int, ...] = (), dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Haar-random orthonormal basis (*batch, d, r): Q of the QR of a Gaussian matrix."""
    d, r = int(as_dim(d, minimum=1)), int(as_dim(r, name="r", minimum=1))
    if r > d:
        raise ValueError(f"r must be <= d; got r={r}, d={d}")
    g = torch.randn(*batch, d, r, generator=generator, dtype=dtype)
    q, rr = torch.linalg.qr(g)
    # Fix the sign ambiguity of QR so the law is exactly Haar (Mezzadri 2007).
    return q * torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1)).unsqueeze(-2)


def _check_rsd(r: object, s: object, d: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = as_dim(d, minimum=1)
    r = as_dim(r, name="r", minimum=1)
    s = as_dim(s, name="s", minimum=1)
    if (r > d).any() or (s > d).any():
        raise ValueError(f"subspace dimensions must not exceed d; got r={r}, s={s}, d={d}")
    return r, s, d


def random_overlap_mean(r: object, s: object, d: object) -> float | np.ndarray:
    """E[Σ cos²θ_i] = r s / d for a random r-subspace against a fixed s-subspace of R^d."""
    r, s, d = _check_rsd(r, s, d)
    return scalar_or_array(r * s / d)


def random_overlap_var(r: object, s: object, d: object) -> float | np.ndarray:
    """Var[Σ cos²θ_i] = 2 r s (d − r)(d − s) / (d² (d + 2)(d − 1)); 0 for d = 1."""
    r, s, d = _check_rsd(r, s, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = 2.0 * r * s * (d - r) * (d - s) / (d**2 * (d + 2.0) * (d - 1.0))
    return scalar_or_array(np.where(d > 1, v, 0.0))


def _alpha_beta(alpha: float, beta: float) -> tuple[float, float]:
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not 0.0 < v <= 1.0:
            raise ValueError(f"{name} (a subspace dimension over d) must lie in (0, 1]; got {name}={v!r}")
    return float(alpha), float(beta)


def wachter_support(alpha: float, beta: float) -> tuple[float, float]:
    """(λ₋, λ₊), the support of the continuous part of Wachter's law of cos²θ."""
    alpha, beta = _alpha_beta(alpha, beta)
    centre = alpha + beta - 2.0 * alpha * beta
    half = np.sqrt(max(4.0 * alpha * beta * (1.0 - alpha) * (1.0 - beta), 0.0))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def wachter_atom(alpha: float, beta: float) -> float:
    """Mass at cos²θ = 1 (dimensions forced to intersect): max(α + β − 1, 0) / min(α, β)."""
    alpha, beta = _alpha_beta(alpha, beta)
    return max(alpha + beta - 1.0, 0.0) / min(alpha, beta)


def wachter_pdf(x: object, alpha: float, beta: float) -> float | np.ndarray:
    """Density of the continuous part of Wachter's law of cos²θ (integrates to 1 − atom)."""
    lo, hi = wachter_support(alpha, beta)
    x = as_real(x, name="x")
    inside = (x > lo) & (x < hi) & (x > 0) & (x < 1)
    xx = np.where(inside, x, 0.5)
    dens = np.sqrt(np.maximum((hi - xx) * (xx - lo), 0.0)) / (2 * np.pi * xx * (1 - xx) * min(alpha, beta))
    return scalar_or_array(np.where(inside, dens, 0.0))


def wachter_cdf(x: object, alpha: float, beta: float) -> float | np.ndarray:
    """P(cos²θ <= x) under Wachter's law, by quadrature in x = λ₋ + (λ₊ − λ₋) sin²φ."""
    lo, hi = wachter_support(alpha, beta)
    atom = wachter_atom(alpha, beta)
    width = hi - lo
    x = as_real(x, name="x")

    def integrand(phi: float) -> float:
        u = lo + width * np.sin(phi) ** 2
        if u <= 0.0 or u >= 1.0:
            return 0.0
        return width**2 * 2 * (np.sin(phi) * np.cos(phi)) ** 2 / (2 * np.pi * u * (1 - u) * min(alpha, beta))

    def one(v: float) -> float:
        if v >= 1.0:
            return 1.0
        if v <= lo or width == 0.0:
            return 0.0 if v < hi else 1.0 - atom
        phi = np.arcsin(np.sqrt(min((v - lo) / width, 1.0)))
        return integrate.quad(integrand, 0.0, phi, limit=200)[0]

    return scalar_or_array(np.vectorize(one, otypes=[float])(x))
