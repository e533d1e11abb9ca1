r"""The sphere of curvature +c: :math:`\mathbb{S}^n_c = \{x \in \mathbb{R}^{n+1} : \lVert x\rVert = 1/\sqrt c\}`.

(Named ``spherical`` so it is not mistaken for :mod:`moescope.geometry.sphere`, the exact
laws of random points on the unit sphere.) Points are (..., n + 1). Numerics:

* distance as a half-angle:
  :math:`d(x, y) = \frac{2}{\sqrt c}\operatorname{atan2}(\lVert x - y\rVert, \lVert x + y\rVert)`.
  It is exact for nearly equal points, where :math:`\arccos(c\langle x, y\rangle)` loses half the
  digits, and for nearly antipodal points, where it loses the other half;
* logarithm direction :math:`y - c\langle x,y\rangle x = (y - x) + \tfrac{c}{2}\lVert y - x\rVert^2 x`;
  at the antipode (the cut locus) the logarithm is not unique and 0 is returned.

Reference: Absil, Mahony & Sepulchre 2008, "Optimization Algorithms on Matrix Manifolds", §3.6.
Oracle in the tests: geoopt's ``Sphere`` (c = 1) and mpmath.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moescope.geometry.curved._numerics import UNIT_ROUNDOFF, as_curvature, check_finite, csqrt, detach_c, min_norm

__all__ = [
    "Sphere",
    "check_on_sphere",
    "dist",
    "egrad2rgrad",
    "expmap",
    "logmap",
    "project",
    "proju",
    "transp",
]

_SPHERE_TOL = 1024.0  # allowed |√c‖x‖ − 1| in units of u: rounding, not a different sphere


def check_on_sphere(x: torch.Tensor, c: object = 1.0, *, name: str = "x") -> torch.Tensor:
    """ValueError unless √c‖x‖ = 1 to rounding (and x is (..., n + 1) with n >= 1)."""
    check_finite(x, name)
    cc = as_curvature(c, like=x, sign="+")
    if x.shape[-1] < 2:
        raise ValueError(f"{name} must have n + 1 >= 2 coordinates; got shape {tuple(x.shape)}")
    r = csqrt(detach_c(cc)) * torch.linalg.vector_norm(x.detach(), dim=-1)
    bad = (r - 1.0).abs() > _SPHERE_TOL * UNIT_ROUNDOFF[x.dtype]
    if bool(bad.any()):
        raise ValueError(
            f"{name} must lie on the sphere ‖x‖ = 1/√c; got a point with √c‖x‖ = {float(r[bad].flatten()[0]):.17g}. "
            f"Normalise points with project(x, c=c)."
        )
    return cc


def project(x: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r""":math:`x \mapsto x/(\sqrt c\lVert x\rVert)`; ValueError for x = 0 (no direction to keep)."""
    check_finite(x, "x")
    cc = as_curvature(c, like=x, sign="+")
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if bool((norm.detach() < min_norm(x.dtype)).any()):
        raise ValueError("cannot project x = 0 onto the sphere: it has no direction")
    return x / (csqrt(cc) * norm)


def dist(x: torch.Tensor, y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r""":math:`d(x, y) = \frac{2}{\sqrt c}\operatorname{atan2}(\lVert x - y\rVert, \lVert x + y\rVert)`, (...)."""
    cc = check_on_sphere(x, c, name="x")
    check_on_sphere(y, cc, name="y")
    a = torch.linalg.vector_norm(x - y, dim=-1, keepdim=True)
    b = torch.linalg.vector_norm(x + y, dim=-1, keepdim=True)
    return (2.0 / csqrt(cc) * torch.atan2(a, b)).squeeze(-1)


def proju(x: torch.Tensor, u: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Tangent projection :math:`u - c\langle x, u\rangle x`."""
    cc = as_curvature(c, like=x, sign="+")
    return u - cc * (x * u).sum(-1, keepdim=True) * x


def expmap(x: torch.Tensor, u: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r""":math:`\exp_x(u) = \cos(\sqrt c\lVert u\rVert)\,x + \sin(\sqrt c\lVert u\rVert)\frac{u}{\sqrt c\lVert u\rVert}`,
    renormalised (u tangent at x)."""
    cc = check_on_sphere(x, c)
    check_finite(u, "u")
    sc = csqrt(cc)
    r = torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(min_norm(u.dtype))
    return project(torch.cos(sc * r) * x + torch.sin(sc * r) / (sc * r) * u, c=cc)


def logmap(x: torch.Tensor, y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r""":math:`\log_x(y) = d(x, y)\,v/\lVert v\rVert`, :math:`v = (y - x) + \tfrac{c}{2}\lVert y - x\rVert^2 x`."""
    cc = as_curvature(c, like=x, sign="+")
    diff = y - x
    v = diff + 0.5 * cc * diff.square().sum(-1, keepdim=True) * x
    vn = torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(min_norm(v.dtype))
    return dist(x, y, c=cc).unsqueeze(-1) / vn * v


def egrad2rgrad(x: torch.Tensor, grad: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    """The induced metric is Euclidean: the Riemannian gradient is the tangent projection."""
    return proju(x, grad, c=c)


def transp(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Parallel transport along the minimising geodesic:
    :math:`P_{x\to y}(v) = v - \frac{c\langle y, v\rangle}{1 + c\langle x, y\rangle}(x + y)`."""
    cc = as_curvature(c, like=x, sign="+")
    xy = cc * (x * y).sum(-1, keepdim=True)
    return v - cc * (y * v).sum(-1, keepdim=True) / (1.0 + xy) * (x + y)


@dataclass(frozen=True)
class Sphere:
    """The sphere of curvature +c; points (..., n + 1) (``coord_dim(n) == n + 1``)."""

    c: float | torch.Tensor = 1.0
    name = "S"
    sign = 1

    def __post_init__(self) -> None:
        as_curvature(self.c, sign="+")

    @staticmethod
    def coord_dim(n: int) -> int:
        return n + 1

    def origin(self, *shape: int, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        o = torch.zeros(*shape, n + 1, dtype=dtype)
        o[..., 0] = 1.0 / float(torch.as_tensor(self.c).sqrt())
        return o

    def random(self, *shape: int, n: int, std: float | None = None, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Uniform on the sphere (``std`` is accepted for a common signature and ignored)."""
        return project(torch.randn(*shape, n + 1, generator=generator, dtype=dtype), c=self.c)

    def check(self, x: torch.Tensor, name: str = "x") -> None:
        check_on_sphere(x, self.c, name=name)

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
        return (u * v).sum(-1)

    def component_inner(self, x, u):
        return u.square().sum(-1, keepdim=True)

    def transp(self, x, y, v):
        return transp(x, y, v, c=self.c)

    def expmap_transp(self, x, u, v):
        """(projx(exp_x u), v transported there): one optimiser step."""
        y = self.projx(self.expmap(x, u))
        return y, self.transp(x, y, v)
