r"""Products of constant-curvature spaces, e.g. H² × S¹ × E², and their signatures.

A point of :math:`M = M_1 \times \dots \times M_K` is the concatenation of one point per
factor along the last dimension. The product metric gives the distance

.. math:: d_M(x, y) = \Big(\sum_k d_{M_k}(x_k, y_k)^2\Big)^{1/2}

(Gu, Sala, Gunel & Ré 2019, "Learning Mixed-Curvature Representations in Product Spaces", §3.1).
exp, log, projections and transport act factor by factor. A signature such as ``"H2xS1"``
names the factors and their intrinsic dimensions (:func:`parse_signature`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from moescope.geometry.curved.euclidean import Euclidean
from moescope.geometry.curved.lorentz import Lorentz
from moescope.geometry.curved.poincare import PoincareBall
from moescope.geometry.curved.spherical import Sphere

__all__ = ["Manifold", "ProductManifold", "format_signature", "parse_signature"]


class Manifold(Protocol):
    """What every space here provides (points (..., coord_dim(n)), tangent vectors alike)."""

    name: str
    sign: int

    def coord_dim(self, n: int) -> int: ...
    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...
    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor: ...
    def logmap(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...
    def projx(self, x: torch.Tensor) -> torch.Tensor: ...
    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor: ...
    def egrad2rgrad(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor: ...
    def component_inner(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor: ...
    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


_TOKEN = re.compile(r"^\s*([EHS])\s*\^?\s*(\d+)\s*$")
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")


@dataclass(frozen=True)
class ProductManifold:
    """M₁ × … × M_K from ``factors = ((manifold, n), ...)``, n the intrinsic dimension of each."""

    factors: tuple[tuple[Manifold, int], ...]
    _slices: tuple[slice, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        factors = tuple(self.factors)
        if not factors:
            raise ValueError("a product needs at least one factor, e.g. ((PoincareBall(), 2), (Sphere(), 1))")
        slices, start = [], 0
        for i, item in enumerate(factors):
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(f"factor {i} must be a (manifold, n) pair; got {item!r}")
            m, n = item
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"factor {i} ({getattr(m, 'name', m)!r}) needs an integer dimension n >= 1; got {n!r}")
            width = m.coord_dim(n)
            slices.append(slice(start, start + width))
            start += width
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "_slices", tuple(slices))

    @property
    def name(self) -> str:
        return format_signature(self)

    @property
    def dim(self) -> int:
        """Intrinsic dimension Σ n_k."""
        return sum(n for _, n in self.factors)

    @property
    def width(self) -> int:
        """Coordinates per point (the sphere and hyperboloid factors carry one extra each)."""
        return self._slices[-1].stop

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != self.width:
            raise ValueError(f"points of {self.name} have {self.width} coordinates; got shape {tuple(x.shape)}")
        return [x[..., s] for s in self._slices]

    def _each(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        parts = zip(*(self.split(t) for t in tensors), strict=True)
        return torch.cat([fn(m, *p) for (m, _), p in zip(self.factors, parts, strict=True)], dim=-1)

    def origin(self, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.cat([m.origin(*shape, n=n, dtype=dtype) for m, n in self.factors], dim=-1)

    def random(self, *shape: int, std: float = 1.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.cat([m.random(*shape, n=n, std=std, generator=generator, dtype=dtype)
                          for m, n in self.factors], dim=-1)

    def check(self, x: torch.Tensor, name: str = "x") -> None:
        for (m, _), part in zip(self.factors, self.split(x), strict=True):
            m.check(part, name=f"{name}[{m.name}]")

    def component_dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-factor distances, (..., K)."""
        xs, ys = self.split(x), self.split(y)
        return torch.stack([m.dist(a, b) for (m, _), a, b in zip(self.factors, xs, ys, strict=True)], dim=-1)

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:math:`(\\sum_k d_k^2)^{1/2}`, (...)."""
        return torch.linalg.vector_norm(self.component_dist(x, y), dim=-1)

    def expmap(self, x, u):
        return self._each(lambda m, a, b: m.expmap(a, b), x, u)

    def logmap(self, x, y):
        return self._each(lambda m, a, b: m.logmap(a, b), x, y)

    def projx(self, x):
        return self._each(lambda m, a: m.projx(a), x)

    def proju(self, x, u):
        return self._each(lambda m, a, b: m.proju(a, b), x, u)

    def egrad2rgrad(self, x, grad):
        return self._each(lambda m, a, b: m.egrad2rgrad(a, b), x, grad)

    def inner(self, x, u, v):
        parts = zip(self.split(x), self.split(u), self.split(v), strict=True)
        return sum(m.inner(a, b, w) for (m, _), (a, b, w) in zip(self.factors, parts, strict=True))

    def component_inner(self, x, u):
        """Each factor's second-moment term, broadcast over that factor's coordinates."""
        return self._each(lambda m, a, b: m.component_inner(a, b).expand_as(b), x, u)

    def transp(self, x, y, v):
        return self._each(lambda m, a, b, w: m.transp(a, b, w), x, y, v)

    def expmap_transp(self, x, u, v):
        """(projx(exp_x u), v transported there), factor by factor."""
        outs = [m.expmap_transp(a, b, w) for (m, _), a, b, w in
                zip(self.factors, self.split(x), self.split(u), self.split(v), strict=True)]
        return torch.cat([o[0] for o in outs], dim=-1), torch.cat([o[1] for o in outs], dim=-1)

    def component_pdist(self, x: torch.Tensor) -> torch.Tensor:
        """Per-factor distance matrices of points (..., m, width): (..., m, m, K), by broadcasting."""
        return self.component_dist(x.unsqueeze(-2), x.unsqueeze(-3))


def parse_signature(signature: str, *, curvatures: Sequence[float] | None = None,
                    hyperbolic: str = "poincare") -> ProductManifold:
    """A product from a signature such as ``"H2xS1"``, ``"E3"``, ``"H^2 × S^1 × E^2"`` or ``"H²×S¹"``.

    Args:
        signature: factors E (flat), H (curvature −c), S (curvature +c) with their
            intrinsic dimensions, joined by ``x``, ``×`` or ``*``.
        curvatures: one magnitude c > 0 per factor (ignored for E); default all 1.
        hyperbolic: model of the H factors, ``"poincare"`` or ``"lorentz"``.
    """
    if not isinstance(signature, str):
        raise TypeError(f"signature must be a string such as 'H2xS1'; got {signature!r}")
    if hyperbolic not in ("poincare", "lorentz"):
        raise ValueError(f"hyperbolic must be 'poincare' or 'lorentz'; got {hyperbolic!r}")
    tokens = re.split(r"[x×*]", signature.translate(_SUPERSCRIPTS))
    parsed = []
    for tok in tokens:
        m = _TOKEN.match(tok)
        if m is None or int(m.group(2)) < 1:
            raise ValueError(
                f"cannot read signature {signature!r}: each factor is E, H or S followed by its dimension >= 1, "
                f"joined by 'x' (e.g. 'H2xS1xE2'); bad factor {tok.strip()!r}"
            )
        parsed.append((m.group(1), int(m.group(2))))
    if curvatures is not None and len(curvatures) != len(parsed):
        raise ValueError(f"curvatures must give one value per factor ({len(parsed)}); got {list(curvatures)}")
    cs = list(curvatures) if curvatures is not None else [1.0] * len(parsed)
    factors = []
    for (kind, n), c in zip(parsed, cs, strict=True):
        if kind == "E":
            factors.append((Euclidean(), n))
        elif kind == "H":
            factors.append((PoincareBall(c) if hyperbolic == "poincare" else Lorentz(c), n))
        else:
            factors.append((Sphere(c), n))
    return ProductManifold(tuple(factors))


def format_signature(m: ProductManifold, *, pretty: bool = False) -> str:
    """``"H2xS1"`` (or ``"H²×S¹"`` with ``pretty``)."""
    sup = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
    parts = [f"{f.name}{n}".translate(sup) if pretty else f"{f.name}{n}" for f, n in m.factors]
    return ("×" if pretty else "x").join(parts)
