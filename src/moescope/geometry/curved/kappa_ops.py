r"""The κ-stereographic model: one set of formulas for curvature κ < 0, κ = 0 and κ > 0.

For curvature κ the κ-stereographic model is :math:`\mathfrak{st}^n_\kappa = \{x \in \mathbb{R}^n :
-\kappa\lVert x\rVert^2 < 1\}` with the conformal factor :math:`\lambda^\kappa_x = 2/(1 + \kappa\lVert x\rVert^2)`
(Bachmann, Bécigneul & Ganea 2020, "Constant Curvature Graph Convolutional Networks", §3.1). For κ < 0
it is the Poincaré ball of curvature κ = −c; for κ > 0 it is the stereographic projection of the sphere of
radius :math:`1/\sqrt\kappa` from its south pole (the origin is the north pole, the south pole is at
infinity); for κ = 0 it is :math:`\mathbb{R}^n` with the metric :math:`4\langle\cdot,\cdot\rangle`, the limit of
both, so :math:`d_0(x, y) = 2\lVert x - y\rVert`. Points and tangent vectors are (..., n); ``kappa`` is a
plain float (the sign picks the formula, so it is fixed per component).

For κ < 0 every function calls :mod:`moescope.geometry.curved.poincare` with ``c = −κ`` (its
cancellation-free formulas and its clamp inside the ball). κ = 0 is Euclidean. This module writes out only
the κ > 0 side, with :math:`\tan_\kappa(r) = \tan(\sqrt\kappa\, r)/\sqrt\kappa`:

* Möbius addition (Ungar 2005 with the sign of the curvature flipped)
  :math:`x \oplus_\kappa y = \frac{(1 - 2\kappa\langle x,y\rangle - \kappa\lVert y\rVert^2)\,x + (1 + \kappa\lVert
  x\rVert^2)\,y}{1 - 2\kappa\langle x,y\rangle + \kappa^2\lVert x\rVert^2\lVert y\rVert^2}`;
* :math:`\exp^\kappa_0(u) = \tan_\kappa(\lVert u\rVert)\,u/\lVert u\rVert`,
  :math:`\log^\kappa_0(y) = \tan_\kappa^{-1}(\lVert y\rVert)\,y/\lVert y\rVert`,
  :math:`d_\kappa(x, y) = 2\tan_\kappa^{-1}\lVert -x \oplus_\kappa y\rVert`;
* the antipode :math:`-x/(\kappa\lVert x\rVert^2)`.

Built on those, for every κ (Bachmann et al. 2020, §3.2-3.3):

* :func:`mobius_scalar_mul` :math:`r \otimes_\kappa x = \exp^\kappa_0(r\log^\kappa_0 x)`;
* :func:`mobius_matvec` :math:`M \otimes_\kappa x = \exp^\kappa_0(M\log^\kappa_0 x)`, which equals Ganea et al.'s
  :math:`\tan_\kappa\big(\tfrac{\lVert Mx\rVert}{\lVert x\rVert}\tan_\kappa^{-1}\lVert x\rVert\big)\tfrac{Mx}{\lVert
  Mx\rVert}` because :math:`\log^\kappa_0 x` is a positive multiple of x;
* :func:`weighted_midpoint`, the weighted gyromidpoint
  :math:`m = \tfrac12 \otimes_\kappa \sum_j \frac{\alpha_j\lambda^\kappa_{x_j}}{\sum_l \alpha_l(\lambda^\kappa_{x_l}
  - 1)} x_j`, which for κ > 0 is one of two antipodal candidates (the one with the smaller α-weighted sum of
  distances is kept), and its "linear combination" form :math:`(\sum_j\alpha_j) \otimes_\kappa m`, the κ-GCN's
  left multiplication by a row of the adjacency matrix.

Oracle in the tests: geoopt's ``Stereographic(k=κ)`` (``manifolds/stereographic/math.py``) in float64,
values and gradients.
"""

from __future__ import annotations

import math

import torch

from moescope.geometry.curved import poincare
from moescope.geometry.curved._numerics import check_finite, min_norm
from moescope.geometry.curved.product import parse_signature

__all__ = [
    "antipode",
    "artan_k",
    "check_kappa",
    "conformal_factor",
    "dist",
    "expmap0",
    "factor_curvatures",
    "logmap0",
    "mobius_add",
    "mobius_matvec",
    "mobius_scalar_mul",
    "tan_k",
    "weighted_midpoint",
]

# Denominators that vanish only at a point's antipode (κ > 0) or for weights summing to zero are kept
# at least this far from 0 (geoopt uses the same 1e-15 floor).
_DENOM_FLOOR = 1e-15


def check_kappa(kappa: object) -> float:
    """``kappa`` as a float; ValueError unless it is a finite real number (TypeError for non-numbers)."""
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)):
        raise TypeError(f"kappa must be a real number (the curvature, any sign); got {kappa!r}")
    if not math.isfinite(kappa):
        raise ValueError(f"kappa must be a finite curvature (negative, zero or positive); got kappa={kappa!r}")
    return float(kappa)


def factor_curvatures(signature: str, curvatures=None) -> tuple[tuple[float, int], ...]:
    """(κ, n) per factor of a product signature such as ``"H2xS2xE2"`` (read by
    :func:`~moescope.geometry.curved.product.parse_signature`): H → −c, S → +c, E → 0, c = 1 unless given."""
    pm = parse_signature(signature, curvatures=curvatures)
    return tuple((float(m.sign) * float(getattr(m, "c", 0.0)), n) for m, n in pm.factors)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(min_norm(x.dtype))


def tan_k(r: torch.Tensor, kappa: float) -> torch.Tensor:
    r""":math:`\tan_\kappa(r)`: :math:`\tanh(\sqrt{-\kappa}r)/\sqrt{-\kappa}`, r, or
    :math:`\tan(\sqrt\kappa r)/\sqrt\kappa`."""
    k = check_kappa(kappa)
    if k == 0:
        return r
    s = math.sqrt(abs(k))
    return torch.tanh(s * r) / s if k < 0 else torch.tan(s * r) / s


def artan_k(r: torch.Tensor, kappa: float) -> torch.Tensor:
    r""":math:`\tan_\kappa^{-1}(r)`: :math:`\operatorname{artanh}(\sqrt{-\kappa}r)/\sqrt{-\kappa}`, r, or
    :math:`\arctan(\sqrt\kappa r)/\sqrt\kappa`."""
    k = check_kappa(kappa)
    if k == 0:
        return r
    s = math.sqrt(abs(k))
    return torch.atanh(s * r) / s if k < 0 else torch.atan(s * r) / s


def conformal_factor(x: torch.Tensor, kappa: float) -> torch.Tensor:
    r""":math:`\lambda^\kappa_x = 2/(1 + \kappa\lVert x\rVert^2)`, shape (..., 1) (exact near the ball's edge
    for κ < 0)."""
    k = check_kappa(kappa)
    if k < 0:
        return poincare.lambda_x(x, c=-k)
    return 2.0 / (1.0 + k * x.square().sum(-1, keepdim=True))


def mobius_add(x: torch.Tensor, y: torch.Tensor, *, kappa: float) -> torch.Tensor:
    r"""Möbius addition :math:`x \oplus_\kappa y`, (..., n) (formula in the module docstring)."""
    k = check_kappa(kappa)
    if k < 0:
        return poincare.mobius_add(x, y, c=-k)
    check_finite(x, "x")
    check_finite(y, "y")
    if k == 0:
        return x + y
    x2 = x.square().sum(-1, keepdim=True)
    y2 = y.square().sum(-1, keepdim=True)
    xy = (x * y).sum(-1, keepdim=True)
    num = (1 - 2 * k * xy - k * y2) * x + (1 + k * x2) * y
    den = 1 - 2 * k * xy + k**2 * x2 * y2          # = |1 − κ x ȳ|² ≥ 0 (0 only at y = antipode of −x)
    return num / den.clamp_min(_DENOM_FLOOR)


def expmap0(u: torch.Tensor, *, kappa: float) -> torch.Tensor:
    r""":math:`\exp^\kappa_0(u) = \tan_\kappa(\lVert u\rVert)\,u/\lVert u\rVert`, (..., n).

    κ < 0: :func:`poincare.expmap0` (kept inside the ball). κ > 0: the geodesic wraps around the sphere, so
    a vector of length between π/(2√κ) and π/√κ lands beyond the south pole (whose image is at infinity),
    in the direction −u, as on the sphere itself.
    """
    k = check_kappa(kappa)
    if k < 0:
        return poincare.expmap0(u, c=-k)
    check_finite(u, "u")
    if k == 0:
        return u
    s, r = math.sqrt(k), _norm(u)
    return torch.tan(s * r) / (s * r) * u


def logmap0(y: torch.Tensor, *, kappa: float) -> torch.Tensor:
    r""":math:`\log^\kappa_0(y) = \tan_\kappa^{-1}(\lVert y\rVert)\,y/\lVert y\rVert`, (..., n)."""
    k = check_kappa(kappa)
    if k < 0:
        return poincare.logmap0(y, c=-k)
    check_finite(y, "y")
    if k == 0:
        return y
    s, r = math.sqrt(k), _norm(y)
    return torch.atan(s * r) / (s * r) * y


def dist(x: torch.Tensor, y: torch.Tensor, *, kappa: float) -> torch.Tensor:
    r"""Geodesic distance :math:`d_\kappa(x, y) = 2\tan_\kappa^{-1}\lVert -x\oplus_\kappa y\rVert`, shape (...).

    κ < 0: :func:`poincare.dist` (its asinh form, equal and stable); κ = 0: :math:`2\lVert x - y\rVert`.
    """
    k = check_kappa(kappa)
    if k < 0:
        return poincare.dist(x, y, c=-k)
    if k == 0:
        return 2.0 * torch.linalg.vector_norm(check_finite(x, "x") - check_finite(y, "y"), dim=-1)
    w = torch.linalg.vector_norm(mobius_add(-x, y, kappa=k), dim=-1)
    return 2.0 / math.sqrt(k) * torch.atan(math.sqrt(k) * w)


def antipode(x: torch.Tensor, *, kappa: float) -> torch.Tensor:
    r"""The antipode: :math:`-x/(\kappa\lVert x\rVert^2)` for κ > 0 (the point at distance :math:`\pi/\sqrt\kappa`),
    −x otherwise (geoopt's convention)."""
    k = check_kappa(kappa)
    if k <= 0:
        return -x
    return -x / (k * x.square().sum(-1, keepdim=True).clamp_min(_DENOM_FLOOR))


def mobius_scalar_mul(r: torch.Tensor | float, x: torch.Tensor, *, kappa: float) -> torch.Tensor:
    r""":math:`r \otimes_\kappa x = \exp^\kappa_0(r \log^\kappa_0 x)`; r is a scalar or broadcasts as (..., 1)."""
    return expmap0(r * logmap0(x, kappa=kappa), kappa=kappa)


def mobius_matvec(m: torch.Tensor, x: torch.Tensor, *, kappa: float) -> torch.Tensor:
    r""":math:`M \otimes_\kappa x = \exp^\kappa_0(M \log^\kappa_0 x)` for m (n_out, n_in), x (..., n_in)
    → (..., n_out)."""
    return expmap0(logmap0(x, kappa=kappa) @ m.transpose(-1, -2), kappa=kappa)


def _weighted_dist_sum(mid: torch.Tensor, x: torch.Tensor, w: torch.Tensor, k: float) -> torch.Tensor:
    """Σ_j w_ij d(mid_i, x_j), (..., M, 1); for 2-D weights only the non-zero pairs are measured (sparse graphs)."""
    if w.dim() == 2 and mid.dim() == 2 and x.dim() == 2:
        i, j = w.nonzero(as_tuple=True)
        d = dist(mid[i], x[j], kappa=k) * w[i, j]
        return torch.zeros(w.shape[0], dtype=d.dtype).index_add(0, i, d).unsqueeze(-1)
    return (w * dist(mid.unsqueeze(-2), x.unsqueeze(-3), kappa=k)).sum(-1, keepdim=True)


def weighted_midpoint(x: torch.Tensor, weights: torch.Tensor, *, kappa: float, lincomb: bool = False
                      ) -> torch.Tensor:
    r"""Weighted gyromidpoints of points ``x`` (N, n), one per row of ``weights`` (M, N) → (M, n).

    :math:`m_i = \tfrac12 \otimes_\kappa \big(\sum_j w_{ij}\lambda_j x_j \big/ \sum_j w_{ij}(\lambda_j - 1)\big)`
    (Ungar 2010; Bachmann et al. 2020, eq. 6). For κ > 0 both :math:`m_i` and its antipode solve the
    midpoint equation; the one with the smaller :math:`\sum_j |w_{ij}|\,d_\kappa(\cdot, x_j)` is kept
    (geoopt weighs every point alike here; the two agree whenever all weights are positive).
    ``lincomb``: return :math:`(\sum_j w_{ij}) \otimes_\kappa m_i`, the κ-GCN's left matrix multiplication
    (Bachmann et al. 2020, eq. 7), which is plain :math:`Wx` at κ = 0. Weights should be non-negative for
    κ < 0 (the midpoint of a negatively weighted set may leave the ball; it is projected back).
    """
    k = check_kappa(kappa)
    check_finite(x, "x")
    total = weights.sum(-1, keepdim=True)                          # (M, 1)
    if k == 0:                                                     # λ = 2: the weighted mean; Wx for lincomb
        s = weights @ x
        return s if lincomb else s / torch.where(total.abs() < _DENOM_FLOOR, _DENOM_FLOOR, total)
    lam = conformal_factor(x, k)                                   # (N, 1)
    num = weights @ (lam * x)                                      # (M, n)
    den = weights @ (lam - 1.0)                                    # (M, 1)
    den = torch.where(den.abs() < _DENOM_FLOOR, _DENOM_FLOOR, den)
    two_mean = num / den
    if k < 0:
        two_mean = poincare.project(two_mean, c=-k)
        # r ⊗ (½ ⊗ t) = (r/2) ⊗ t: one exp/log round trip instead of two
        return mobius_scalar_mul(0.5 * total if lincomb else 0.5, two_mean, kappa=k)
    mid = mobius_scalar_mul(0.5, two_mean, kappa=k)
    # the antipode is at distance π/√κ − d from every point at distance d from mid, so it is the closer
    # candidate exactly when mid's mean |w|-weighted distance exceeds a quarter of the great circle
    w = weights.abs()
    mid = torch.where(_weighted_dist_sum(mid, x, w, k) > math.pi / (2 * math.sqrt(k)) * w.sum(-1, keepdim=True),
                      antipode(mid, kappa=k), mid)
    return mobius_scalar_mul(total, mid, kappa=k) if lincomb else mid
