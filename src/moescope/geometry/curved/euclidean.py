"""Euclidean space, flat (curvature 0), with the same thin interface as the curved models.

It is the baseline the curved spaces are held against (Gu et al. 2019, Table 1, row E), and
the default manifold of :mod:`moescope.geometry.curved.optim`. There, Riemannian SGD and
Adam reduce exactly to :class:`torch.optim.SGD` and :class:`torch.optim.Adam`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moescope.geometry.curved._numerics import check_finite

__all__ = ["Euclidean"]


@dataclass(frozen=True)
class Euclidean:
    """R^n with ⟨u, v⟩; points (..., n) (``coord_dim(n) == n``)."""

    name = "E"
    sign = 0

    @staticmethod
    def coord_dim(n: int) -> int:
        return n

    def origin(self, *shape: int, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.zeros(*shape, n, dtype=dtype)

    def random(self, *shape: int, n: int, std: float = 1.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return std * torch.randn(*shape, n, generator=generator, dtype=dtype)

    def check(self, x: torch.Tensor, name: str = "x") -> None:
        check_finite(x, name)

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """‖x − y‖, (...)."""
        return torch.linalg.vector_norm(x - y, dim=-1)

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x + u

    def logmap(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y - x

    def projx(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u

    def egrad2rgrad(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def inner(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u * v).sum(-1)

    def component_inner(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Elementwise u²: each coordinate is its own factor, as in :class:`torch.optim.Adam`."""
        return u * u

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v

    def expmap_transp(self, x, u, v):
        """(projx(exp_x u), v transported there): one optimiser step."""
        y = self.projx(self.expmap(x, u))
        return y, self.transp(x, y, v)
