r"""The Lorentz (hyperboloid) model of curvature −c, and conversion to and from the Poincaré ball.

.. math:: \mathbb{L}^n_c = \{x \in \mathbb{R}^{n+1} : \langle x, x\rangle_L = -1/c,\ x_0 > 0\},\qquad
    \langle u, v\rangle_L = -u_0 v_0 + \textstyle\sum_{i\ge1} u_i v_i

(Nickel & Kiela 2018, "Learning Continuous Hierarchies in the Lorentz Model"). Points are
(..., n + 1), time coordinate first. Numerics:

* distance through the Minkowski chord: for x, y on the sheet,
  :math:`\langle x-y, x-y\rangle_L = \frac{4}{c}\sinh^2\frac{\sqrt c\,d}{2}`, so
  :math:`d = \frac{2}{\sqrt c}\operatorname{asinh}\big(\tfrac{\sqrt c}{2}\lVert x - y\rVert_L\big)`.
  The textbook :math:`\operatorname{arcosh}(-c\langle x,y\rangle_L)/\sqrt c` returns 0 for
  distances below ~1e-8 in float64. The chord form keeps them; it is accurate while the
  points are not far from the origin. Far out (x₀ ≫ 1) any float representation of the
  hyperboloid loses about log₂ x₀ bits (Yu & De Sa 2019). For points near the edge, use
  the Poincaré ball, whose :func:`~moescope.geometry.curved.poincare.dist` is exact there;
* logarithm direction :math:`y + c\langle x,y\rangle_L x = (y - x) - \tfrac{c}{2}\lVert y - x\rVert_L^2\, x`
  (no cancellation for nearby points);
* conversion with the Poincaré ball: :math:`p = x_{1:}/(1 + \sqrt c\,x_0)` and back
  :math:`x = \big(\tfrac{1 + c\lVert p\rVert^2}{\sqrt c\,g_p}, \tfrac{2p}{g_p}\big)`, with
  :math:`g_p = 1 - c\lVert p\rVert^2` evaluated exactly.

Oracle in the tests: geoopt's ``manifolds/lorentz/math.py`` (its k is 1/c).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moescope.geometry.curved import poincare
from moescope.geometry.curved._numerics import (
    UNIT_ROUNDOFF,
    as_curvature,
    check_finite,
    csqrt,
    detach_c,
    min_norm,
    tight_margin,
)

__all__ = [
    "Lorentz",
    "check_on_hyperboloid",
    "dist",
    "egrad2rgrad",
    "expmap",
    "from_poincare",
    "logmap",
    "minkowski_inner",
    "project",
    "proju",
    "to_poincare",
    "transp",
]

# Allowed violation of c⟨x,x⟩_L = −1 relative to c(x₀² + ‖x_s‖²): generous (2¹⁰ u) because
# points far out carry that much rounding; anything larger is not on the sheet.
_SHEET_TOL = 1024.0


def minkowski_inner(u: torch.Tensor, v: torch.Tensor, *, keepdim: bool = False) -> torch.Tensor:
    r""":math:`\langle u, v\rangle_L = -u_0 v_0 + \sum_{i\ge1} u_i v_i`."""
    prod = u * v
    out = prod[..., 1:].sum(-1, keepdim=True) - prod[..., :1]
    return out if keepdim else out.squeeze(-1)


def check_on_hyperboloid(x: torch.Tensor, c: object = 1.0, *, name: str = "x") -> torch.Tensor:
    """ValueError unless x is (..., n + 1), n >= 1, on the upper sheet of ⟨x, x⟩_L = −1/c (to rounding)."""
    check_finite(x, name)
    cc = as_curvature(c, like=x)
    if x.shape[-1] < 2:
        raise ValueError(f"{name} must have n + 1 >= 2 coordinates (time first); got shape {tuple(x.shape)}")
    xd = x.detach()
    resid = (detach_c(cc) * minkowski_inner(xd, xd) + 1.0).abs()
    scale = detach_c(cc) * xd.square().sum(-1)
    tol = _SHEET_TOL * UNIT_ROUNDOFF[x.dtype] * (1.0 + scale)
    bad = (resid > tol) | (xd[..., 0] <= 0)
    if bool(bad.any()):
        i = bad.flatten().nonzero()[0, 0]
        x0, r = float(xd[..., 0].flatten()[i]), float((detach_c(cc) * minkowski_inner(xd, xd)).flatten()[i])
        raise ValueError(
            f"{name} must lie on the upper sheet of the hyperboloid c⟨x,x⟩_L = −1, x₀ > 0; got a point with "
            f"c⟨x,x⟩_L = {r:.6g} and x₀ = {x0:.6g}. Lift points onto it with project(x, c=c)."
        )
    return cc


def project(x: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Lift onto the sheet by recomputing time: :math:`x_0 = \sqrt{1/c + \lVert x_{1:}\rVert^2}`."""
    check_finite(x, "x")
    cc = as_curvature(c, like=x)
    xs = x[..., 1:]
    return torch.cat([(1.0 / cc + xs.square().sum(-1, keepdim=True)).sqrt(), xs], dim=-1)


def _chord(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Minkowski length of x − y (keepdim), from the spatial parts:
    :math:`\Delta_0 = \frac{\Delta_s\cdot(x_s + y_s)}{x_0 + y_0}` (exact on the sheet), so the stored
    time coordinates enter only through a denominator and their rounding cancels nothing."""
    xs, ys = x[..., 1:], y[..., 1:]
    ds = xs - ys
    d0 = (ds * (xs + ys)).sum(-1, keepdim=True) / (x[..., :1] + y[..., :1])
    chord2 = ds.square().sum(-1, keepdim=True) - d0.square()
    pos = chord2 > 0
    return torch.where(pos, torch.where(pos, chord2, 1.0).sqrt(), 0.0)   # sqrt with a zero gradient at 0


def dist(x: torch.Tensor, y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Distance (...): :math:`d = \frac{2}{\sqrt c}\operatorname{asinh}\big(\frac{\sqrt c}{2}
    \sqrt{\langle x-y,x-y\rangle_L}\big)`."""
    cc = check_on_hyperboloid(x, c, name="x")
    check_on_hyperboloid(y, cc, name="y")
    sc = csqrt(cc)
    return (2.0 / sc * torch.asinh(0.5 * sc * _chord(x, y))).squeeze(-1)


def proju(x: torch.Tensor, v: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Project onto the tangent space at x: :math:`v + c\langle x, v\rangle_L\, x`."""
    cc = as_curvature(c, like=x)
    return v + cc * minkowski_inner(x, v, keepdim=True) * x


def _tangent_norm(u: torch.Tensor) -> torch.Tensor:
    return minkowski_inner(u, u, keepdim=True).clamp_min(min_norm(u.dtype) ** 2).sqrt()


def expmap(x: torch.Tensor, u: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r""":math:`\exp_x(u) = \cosh(\sqrt c\lVert u\rVert_L)\,x
    + \sinh(\sqrt c\lVert u\rVert_L)\frac{u}{\sqrt c\lVert u\rVert_L}`,
    then lifted back onto the sheet (u must be tangent at x: :func:`proju`)."""
    cc = check_on_hyperboloid(x, c)
    check_finite(u, "u")
    sc, r = csqrt(cc), _tangent_norm(u)
    return project(torch.cosh(sc * r) * x + torch.sinh(sc * r) / (sc * r) * u, c=cc)


def logmap(x: torch.Tensor, y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r""":math:`\log_x(y) = d(x, y)\,v/\lVert v\rVert_L`
    with :math:`v = (y - x) - \tfrac{c}{2}\lVert y - x\rVert_L^2\,x`."""
    cc = as_curvature(c, like=x)
    diff = y - x
    v = diff - 0.5 * cc * minkowski_inner(diff, diff, keepdim=True) * x
    return dist(x, y, c=cc).unsqueeze(-1) / _tangent_norm(v) * v


def egrad2rgrad(x: torch.Tensor, grad: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Riemannian gradient: flip the time component (the metric's inverse), then :func:`proju`."""
    return proju(x, torch.cat([-grad[..., :1], grad[..., 1:]], dim=-1), c=c)


def transp(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Parallel transport
    :math:`P_{x\to y}(v) = v + \frac{c\langle y, v\rangle_L}{1 - c\langle x, y\rangle_L}(x + y)`."""
    cc = as_curvature(c, like=x)
    coef = cc * minkowski_inner(y, v, keepdim=True) / (1.0 - cc * minkowski_inner(x, y, keepdim=True))
    return v + coef * (x + y)


def to_poincare(x: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Hyperboloid → ball: :math:`p = x_{1:}/(1 + \sqrt c\,x_0)` (an isometry for the same c)."""
    cc = check_on_hyperboloid(x, c)
    return poincare.project(x[..., 1:] / (1.0 + csqrt(cc) * x[..., :1]), c=cc,
                            margin=tight_margin(x.dtype))


def from_poincare(p: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Ball → hyperboloid: :math:`x = \big((1 + c\lVert p\rVert^2)/(\sqrt c\,g_p),\ 2p/g_p\big)`."""
    cc = as_curvature(c, like=p)
    g = poincare.gap(p, cc, name="p")
    return torch.cat([(2.0 - g) / (csqrt(cc) * g), 2.0 * p / g], dim=-1)


@dataclass(frozen=True)
class Lorentz:
    """The hyperboloid of curvature −c; points (..., n + 1), time first (``coord_dim(n) == n + 1``)."""

    c: float | torch.Tensor = 1.0
    name = "H"
    sign = -1

    def __post_init__(self) -> None:
        as_curvature(self.c)

    @staticmethod
    def coord_dim(n: int) -> int:
        return n + 1

    def origin(self, *shape: int, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        o = torch.zeros(*shape, n + 1, dtype=dtype)
        o[..., 0] = 1.0 / float(torch.as_tensor(self.c).sqrt())
        return o

    def random(self, *shape: int, n: int, std: float = 1.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return from_poincare(poincare.expmap0(std * torch.randn(*shape, n, generator=generator, dtype=dtype),
                                              c=self.c), c=self.c)

    def check(self, x: torch.Tensor, name: str = "x") -> None:
        check_on_hyperboloid(x, self.c, name=name)

    def dist(self, x, y):
        return dist(x, y, c=self.c)

    def expmap(self, x, u):
        return expmap(x, u, c=self.c)

    def logmap(self, x, y):
        return logmap(x, y, c=self.c)

    def projx(self, x):
        return project(x, c=self.c)

    def proju(self, x, u):
        return proju(x, u, c=self.c)

    def egrad2rgrad(self, x, grad):
        return egrad2rgrad(x, grad, c=self.c)

    def inner(self, x, u, v):
        return minkowski_inner(u, v)

    def component_inner(self, x, u):
        return minkowski_inner(u, u, keepdim=True).clamp_min(0.0)

    def transp(self, x, y, v):
        return transp(x, y, v, c=self.c)

    def expmap_transp(self, x, u, v):
        """(projx(exp_x u), v transported there): one optimiser step."""
        y = self.projx(self.expmap(x, u))
        return y, self.transp(x, y, v)
