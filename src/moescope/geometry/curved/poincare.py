r"""The Poincaré ball of curvature −c: pure functions, then the thin :class:`PoincareBall`.

The ball is :math:`\mathbb{D}^n_c = \{x \in \mathbb{R}^n : c\lVert x\rVert^2 < 1\}` with the
metric :math:`\lambda_x^2 \langle\cdot,\cdot\rangle`, where
:math:`\lambda_x = 2/(1 - c\lVert x\rVert^2)` (Ganea, Bécigneul & Hofmann 2018,
"Hyperbolic Neural Networks", §2). Every formula here divides by
:math:`g_x = 1 - c\lVert x\rVert^2`, and that number is evaluated exactly
(:func:`~moescope.geometry.curved._numerics.one_minus_cnorm2`). Each formula is then
arranged so that no other subtraction cancels:

* distance: :math:`d_c(x, y) = \frac{2}{\sqrt c}\operatorname{asinh}
  \frac{\sqrt c\,\lVert x - y\rVert}{\sqrt{g_x g_y}}`. The usual
  :math:`\operatorname{arcosh}(1 + 2c\lVert x-y\rVert^2/(g_x g_y))/\sqrt c` returns 0 once
  the distance falls below ~1e-8 (float64), because the argument rounds to 1. The Möbius
  form :math:`\frac{2}{\sqrt c}\operatorname{artanh}(\sqrt c\lVert -x \oplus_c y\rVert)` loses
  every digit near the boundary. This one stays accurate in both places (tests: mpmath at 200 bits);
* Möbius addition with :math:`x \oplus_c y = \frac{g_x (x + y) + c\lVert x + y\rVert^2 x}
  {g_x g_y + c\lVert x + y\rVert^2}`. This is Ungar's formula with
  :math:`1 + 2c\langle x,y\rangle + c\lVert y\rVert^2 = g_x + c\lVert x+y\rVert^2` and
  :math:`1 + 2c\langle x,y\rangle + c^2\lVert x\rVert^2\lVert y\rVert^2 = g_x g_y + c\lVert x+y\rVert^2`:
  each is a sum of non-negative terms, so it does not cancel as x → −y near the edge;
* logarithm: the direction of :math:`-x \oplus_c y` is :math:`g_x (y - x) - c\lVert y - x\rVert^2 x`,
  and the length is the stable distance.

Shapes: points and tangent vectors are (..., n) and broadcast; distances are (...).
The curvature magnitude ``c`` is a positive float or tensor (the space has curvature −c).
Reference implementation used as an oracle in the tests: geoopt's
``manifolds/stereographic/math.py`` with k = −c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moescope.geometry.curved._numerics import (
    as_curvature,
    ball_margin,
    check_finite,
    csqrt,
    min_norm,
    one_minus_cnorm2,
    tight_margin,
)

__all__ = [
    "PoincareBall",
    "dist",
    "dist0",
    "dist_pairs",
    "egrad2rgrad",
    "expmap",
    "expmap0",
    "expmap_transp",
    "gap",
    "gyration",
    "inner",
    "lambda_x",
    "logmap",
    "logmap0",
    "mobius_add",
    "project",
    "transp",
]


def gap(x: torch.Tensor, c: object = 1.0, *, name: str = "x") -> torch.Tensor:
    r""":math:`g_x = 1 - c\lVert x\rVert^2 = 2/\lambda_x` (keepdim), exact.

    ValueError for points on or outside the boundary, and for NaN or inf.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim == 0:
        check_finite(x, name)  # raises the precise TypeError / ValueError
    cc = as_curvature(c, like=x)
    g = one_minus_cnorm2(x, cc)
    ok = g.detach() > 0                      # False for NaN too
    if not bool(ok.all()):
        check_finite(x, name)
        bad = torch.linalg.vector_norm(x.detach(), dim=-1).flatten()[(~ok).flatten()][0]
        radius = 1.0 / float(torch.as_tensor(cc).detach().sqrt().max())
        raise ValueError(
            f"{name} must lie strictly inside the Poincaré ball of radius 1/√c = {radius:.17g}; got a point "
            f"with ‖{name}‖ = {float(bad):.17g}. Pull points inside with project(x, c=c)."
        )
    return g


def lambda_x(x: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Conformal factor :math:`\lambda_x = 2/(1 - c\lVert x\rVert^2)`, shape (..., 1)."""
    return 2.0 / gap(x, c)


def project(x: torch.Tensor, *, c: object = 1.0, margin: float | None = None) -> torch.Tensor:
    r"""Pull points inside: :math:`x \mapsto x \min(1, r/\lVert x\rVert)`, :math:`r = (1 - \text{margin})/\sqrt c`.

    ``margin`` defaults to ``BALL_MARGIN[x.dtype]`` (16 u: 2⁻²⁰ in float32, 2⁻⁴⁹ in float64),
    which caps the distance from the origin at ln(2/margin − 1): 14.56 (float32), 34.66 (float64).
    """
    x = check_finite(x, "x")
    cc = as_curvature(c, like=x)
    margin = ball_margin(x.dtype) if margin is None else float(margin)
    if not 0.0 < margin < 1.0:
        raise ValueError(f"margin must lie in (0, 1); got margin={margin!r}")
    max_norm = (1.0 - margin) / csqrt(cc)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.where(norm > max_norm, x * (max_norm / norm.clamp_min(min_norm(x.dtype))), x)


def _inside(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return project(x, c=c, margin=tight_margin(x.dtype))


def _mobius_add(x, y, c, gx, gy):
    s = x + y
    s2 = s.square().sum(-1, keepdim=True)
    return _inside((gx * s + c * s2 * x) / (gx * gy + c * s2), c)


def mobius_add(x: torch.Tensor, y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Möbius addition :math:`x \oplus_c y` (Ungar 2005), in the cancellation-free form

    .. math:: x \oplus_c y = \frac{g_x (x + y) + c\lVert x + y\rVert^2 x}{g_x g_y + c\lVert x + y\rVert^2}.
    """
    cc = as_curvature(c, like=x)
    return _mobius_add(x, y, cc, gap(x, cc, name="x"), gap(y, cc, name="y"))


def _gyration(u, v, w, c, gu, gv):
    uv, uw, vw = ((a * b).sum(-1, keepdim=True) for a, b in ((u, v), (u, w), (v, w)))
    u2, v2 = u.square().sum(-1, keepdim=True), v.square().sum(-1, keepdim=True)
    a = -c**2 * uw * v2 + c * vw + 2 * c**2 * uv * vw
    b = -c**2 * vw * u2 - c * uw
    d = gu * gv + c * (u + v).square().sum(-1, keepdim=True)
    return w + 2 * (a * u + b * v) / d


def gyration(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Gyration :math:`\operatorname{gyr}[u, v]w = \ominus(u \oplus v) \oplus (u \oplus (v \oplus w))`, closed form

    .. math:: \operatorname{gyr}[u,v]w = w + 2\frac{A u + B v}{D},\quad
        A = -c^2\langle u,w\rangle\lVert v\rVert^2 + c\langle v,w\rangle + 2c^2\langle u,v\rangle\langle v,w\rangle,\
        B = -c^2\langle v,w\rangle\lVert u\rVert^2 - c\langle u,w\rangle,\ D = g_u g_v + c\lVert u+v\rVert^2

    (Ungar 2005, Th. 3.4 written for curvature −c; geoopt's ``_gyration`` with k = −c).
    """
    cc = as_curvature(c, like=u)
    check_finite(w, "w")
    return _gyration(u, v, w, cc, gap(u, cc, name="u"), gap(v, cc, name="v"))


def _dist(x, y, c, gx, gy):
    sc = csqrt(c)
    chord = torch.linalg.vector_norm(x - y, dim=-1, keepdim=True)
    return (2.0 / sc * torch.asinh(sc * chord / (gx.sqrt() * gy.sqrt()))).squeeze(-1)


def dist(x: torch.Tensor, y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Geodesic distance (..., ), stable everywhere inside the ball:

    .. math:: d_c(x, y) = \frac{2}{\sqrt c}\operatorname{asinh}\frac{\sqrt c\,\lVert x - y\rVert}{\sqrt{g_x}\sqrt{g_y}}.
    """
    cc = as_curvature(c, like=x)
    return _dist(x, y, cc, gap(x, cc, name="x"), gap(y, cc, name="y"))


def dist_pairs(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    """:func:`dist` between rows ``i`` and ``j`` of points (..., m, n): (..., len(i)); each g_x is computed once."""
    cc = as_curvature(c, like=x)
    g = gap(x, cc)
    return _dist(x[..., i, :], x[..., j, :], cc, g[..., i, :], g[..., j, :])


def dist0(x: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Distance from the origin, :math:`\frac{2}{\sqrt c}\operatorname{asinh}(\sqrt c\lVert x\rVert/\sqrt{g_x})
    = \frac{2}{\sqrt c}\operatorname{artanh}(\sqrt c\lVert x\rVert)`, shape (...)."""
    cc = as_curvature(c, like=x)
    gx = gap(x, cc)
    sc = csqrt(cc)
    return (2.0 / sc * torch.asinh(sc * torch.linalg.vector_norm(x, dim=-1, keepdim=True) / gx.sqrt())).squeeze(-1)


def _floored_norm(u: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(min_norm(u.dtype))


def _expmap(x, u, c, gx):
    sc, r = csqrt(c), _floored_norm(u)
    t = sc * r / gx                                   # √c λ_x ‖u‖ / 2
    v = torch.tanh(t) / (sc * r) * u
    gv = 1.0 / torch.cosh(t.clamp_max(300.0)).square()  # 1 − c‖v‖² = sech²t, even where tanh t rounds to 1
    return _mobius_add(x, v, c, gx, gv)


def expmap(x: torch.Tensor, u: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Exponential map :math:`\exp^c_x(u) = x \oplus_c \Big(\tanh\big(\tfrac{\sqrt c\,\lambda_x\lVert u\rVert}{2}\big)
    \frac{u}{\sqrt c\lVert u\rVert}\Big)` (Ganea et al. 2018, Lemma 2); u is (..., n) at x.

    The second summand's :math:`g = \operatorname{sech}^2` is passed in closed form, so a long
    step does not collapse onto the boundary before the addition.
    """
    cc = as_curvature(c, like=x)
    gx = gap(x, cc)
    check_finite(u, "u")
    return _expmap(x, u, cc, gx)


def expmap0(u: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r""":math:`\exp^c_0(u) = \tanh(\sqrt c\lVert u\rVert)\,u/(\sqrt c\lVert u\rVert)`."""
    check_finite(u, "u")
    cc = as_curvature(c, like=u)
    sc, r = csqrt(cc), _floored_norm(u)
    return _inside(torch.tanh(sc * r) / (sc * r) * u, cc)


def logmap(x: torch.Tensor, y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Logarithm :math:`\log^c_x(y)`: the tangent vector at x of Riemannian length :math:`d_c(x,y)`
    pointing along :math:`-x \oplus_c y \propto g_x (y - x) - c\lVert y - x\rVert^2 x`, i.e.
    :math:`\log^c_x(y) = \frac{g_x}{2} d_c(x, y)\,\frac{n}{\lVert n\rVert}`."""
    cc = as_curvature(c, like=x)
    gx, gy = gap(x, cc, name="x"), gap(y, cc, name="y")
    diff = y - x
    n = gx * diff - cc * diff.square().sum(-1, keepdim=True) * x
    return (0.5 * gx * _dist(x, y, cc, gx, gy).unsqueeze(-1) / _floored_norm(n)) * n


def logmap0(y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r""":math:`\log^c_0(y) = \frac{d_c(0, y)}{2}\frac{y}{\lVert y\rVert} = \operatorname{artanh}(\sqrt c\lVert y\rVert)
    \frac{y}{\sqrt c\lVert y\rVert}`."""
    cc = as_curvature(c, like=y)
    gy = gap(y, cc, name="y")
    sc, r = csqrt(cc), _floored_norm(y)
    return torch.asinh(sc * r / gy.sqrt()) / (sc * r) * y


def inner(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Riemannian inner product :math:`\lambda_x^2\langle u, v\rangle`, shape (...)."""
    return (lambda_x(x, c=c).square() * (u * v).sum(-1, keepdim=True)).squeeze(-1)


def egrad2rgrad(x: torch.Tensor, grad: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Riemannian gradient from the Euclidean one: :math:`\nabla_R = \nabla_E / \lambda_x^2 = \nabla_E\,g_x^2/4`."""
    return grad * gap(x, c).square() / 4.0


def _transp(x, y, v, c, gx, gy):
    return _gyration(y, -x, v, c, gy, gx) * gy / gx


def transp(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Parallel transport of v from x to y along the geodesic:
    :math:`P_{x\to y}(v) = \frac{\lambda_x}{\lambda_y}\operatorname{gyr}[y, -x]v` (Ganea et al. 2018, eq. 8)."""
    cc = as_curvature(c, like=x)
    check_finite(v, "v")
    return _transp(x, y, v, cc, gap(x, cc, name="x"), gap(y, cc, name="y"))


def expmap_transp(x: torch.Tensor, u: torch.Tensor, m: torch.Tensor, *, c: object = 1.0,
                    margin: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, P_{x→y} m) with y = project(exp_x(u)): one optimiser step, each g computed once."""
    cc = as_curvature(c, like=x)
    gx = gap(x, cc)
    y = project(_expmap(x, u, cc, gx), c=cc, margin=margin)
    return y, _transp(x, y, m, cc, gx, gap(y, cc, name="y"))


@dataclass(frozen=True)
class PoincareBall:
    """The Poincaré ball of curvature −c: thin methods over this module's functions.

    Points are (..., n) with n the intrinsic dimension (``coord_dim(n) == n``).
    """

    c: float | torch.Tensor = 1.0
    name = "H"
    sign = -1

    def __post_init__(self) -> None:
        as_curvature(self.c)

    @staticmethod
    def coord_dim(n: int) -> int:
        return n

    def origin(self, *shape: int, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.zeros(*shape, n, dtype=dtype)

    def random(self, *shape: int, n: int, std: float = 1.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """exp₀ of a Gaussian tangent vector with per-coordinate std ``std``."""
        return expmap0(std * torch.randn(*shape, n, generator=generator, dtype=dtype), c=self.c)

    def check(self, x: torch.Tensor, name: str = "x") -> None:
        gap(x, self.c, name=name)

    def dist(self, x, y):
        return dist(x, y, c=self.c)

    def expmap(self, x, u):
        return expmap(x, u, c=self.c)

    def logmap(self, x, y):
        return logmap(x, y, c=self.c)

    def projx(self, x):
        return project(x, c=self.c)

    def proju(self, x, u):
        return u

    def egrad2rgrad(self, x, grad):
        return egrad2rgrad(x, grad, c=self.c)

    def inner(self, x, u, v):
        return inner(x, u, v, c=self.c)

    def component_inner(self, x, u):
        """Squared Riemannian norm per point, (..., 1): the second moment of Riemannian Adam."""
        return inner(x, u, u, c=self.c).unsqueeze(-1)

    def transp(self, x, y, v):
        return transp(x, y, v, c=self.c)

    def expmap_transp(self, x, u, v):
        """(projx(exp_x u), v transported there): one optimiser step."""
        return expmap_transp(x, u, v, c=self.c)
