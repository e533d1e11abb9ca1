r"""Gradient-based graph embeddings into E, H, S and their products (Gu et al. 2019).

Gu, Sala, Gunel & Ré 2019, "Learning Mixed-Curvature Representations in Product Spaces"
(ICLR), §3.2: choose points :math:`x_i \in M = M_1 \times\dots\times M_K` that minimise

.. math:: L(x, s) = \binom{n}{2}^{-1}\sum_{i<j}\Big|\Big(\frac{d_M(x_i, x_j)}{d_G(i, j)}\Big)^2 - 1\Big|,\qquad
    d_M^2 = \sum_k s_k^2\, d_{M_k}^2

with Riemannian Adam. Each curved factor is a unit-curvature model with a learned scale
:math:`s_k > 0` (parameterised as :math:`\log s_k`), which is the same as learning its
curvature :math:`\mp 1/s_k^2`, as Gu et al. do. A Euclidean factor has no scale to learn,
because its points carry it. Choices, stated:

* H factors use the Poincaré ball (exact distance up to ~34 units from the origin in float64);
* initial points: exp₀ of N(0, ``init_std``²) tangent vectors for H, ``init_std``·N(0, 1)
  for E, uniform for S. Initial scales: 1 for H, ``diam/π`` for S (so the sphere's
  diameter πs equals the graph's diameter);
* ``restarts`` independent runs train at once (a leading batch dimension, separate
  parameters and Adam moments); the run with the lowest final loss is reported, and the
  others come back as a spread;
* the learning rate decays on a cosine from ``lr`` to ``lr · lr_final``.

Everything is seeded; the same config gives the same numbers on the same torch build.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moescope.geometry.curved.distortion import (
    average_distortion,
    distortion_loss,
    pair_index,
    worst_case_distortion,
)
from moescope.geometry.curved.euclidean import Euclidean
from moescope.geometry.curved.optim import RiemannianAdam
from moescope.geometry.curved.product import ProductManifold, format_signature, parse_signature
from moescope.geometry.curved.spherical import Sphere

__all__ = ["EmbeddingConfig", "EmbeddingResult", "embed_graph", "pairwise_distances"]


@dataclass(frozen=True)
class EmbeddingConfig:
    """How one signature is fitted. Defaults fit a 40-node graph in a few seconds on one core."""

    steps: int = 1000        # Riemannian Adam steps; on 40 nodes the loss has flattened by then
    lr: float = 0.05         # Riemannian step: ~1/20 of one unit of graph distance
    lr_final: float = 0.01   # cosine decay to lr·lr_final: settles to the minimum instead of rattling in it
    restarts: int = 8        # independent inits run as one batch; the best loss is kept. H²×S¹ on the ring
    #                          of trees has a poor local minimum (S¹ unused) that 3 restarts can all fall into
    init_std: float = 0.1    # small: all points start near the origin and spread out together
    learn_scale: bool = True  # learn each curved factor's scale (= its curvature), as Gu et al. do
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "restarts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {name}={v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number; got lr={self.lr!r}")
        if not 0.0 < self.lr_final <= 1.0:
            raise ValueError(f"lr_final (a fraction of lr) must lie in (0, 1]; got lr_final={self.lr_final!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive; got init_std={self.init_std!r}")


@dataclass(frozen=True)
class EmbeddingResult:
    """The best of the restarts, plus every restart's numbers.

    ``points`` is (n, width) in the order of the distance matrix; ``scales`` has one entry
    per factor (1 for E), and ``curvatures`` is ∓1/s² (0 for E).
    """

    signature: str
    points: torch.Tensor
    scales: tuple[float, ...]
    curvatures: tuple[float, ...]
    loss: float
    avg_distortion: float
    worst_distortion: float
    restart_losses: tuple[float, ...]
    restart_avg_distortions: tuple[float, ...]


def pairwise_distances(manifold: ProductManifold, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Scaled product distance matrix (..., n, n) of points (..., n, width) with scales (..., K)."""
    comp = manifold.component_pdist(x)                                            # (..., n, n, K)
    return torch.linalg.vector_norm(comp * scales[..., None, None, :], dim=-1)   # (..., n, n)


def _masked_loss(d: torch.Tensor, dg: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gu et al.'s loss from full matrices: Σ_{i<j} w_ij |(d/d_G)² − 1| with w = 1/P on i < j, 0 elsewhere.

    Equal to :func:`distortion_loss` over the pairs; full matrices avoid gathers in the backward pass.
    ``dg`` has ones on the diagonal (weight 0 there) so nothing divides by zero.
    """
    return (((d / dg).square() - 1.0).abs() * weight).sum((-2, -1))


def _init(manifold: ProductManifold, restarts: int, n: int, diameter: float, cfg: EmbeddingConfig,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    points = manifold.random(restarts, n, std=cfg.init_std, generator=gen, dtype=torch.float64)
    log_s = torch.zeros(restarts, len(manifold.factors), dtype=torch.float64)
    learnable = torch.zeros(len(manifold.factors), dtype=torch.bool)
    for k, (m, _) in enumerate(manifold.factors):
        if isinstance(m, Sphere):
            log_s[:, k] = math.log(diameter / math.pi)
        learnable[k] = not isinstance(m, Euclidean)
    return points, log_s, learnable


def embed_graph(dist: torch.Tensor, signature: str | ProductManifold, cfg: EmbeddingConfig = EmbeddingConfig(),
                on_step: Callable[[int], None] | None = None) -> EmbeddingResult:
    """Fit Gu et al.'s objective for a graph distance matrix ``dist`` (n, n) into ``signature``.

    Args:
        dist: symmetric graph distances, positive off the diagonal
            (:func:`~moescope.geometry.curved.distortion.graph_distances`).
        signature: e.g. ``"E3"``, ``"H3"``, ``"S3"``, ``"H2xS1"`` or a :class:`ProductManifold`
            whose curved factors have curvature magnitude 1.
        cfg: optimisation settings.
        on_step: called with 1 after every step (progress bars).
    """
    manifold = parse_signature(signature) if isinstance(signature, str) else signature
    if not isinstance(dist, torch.Tensor) or dist.ndim != 2 or dist.shape[0] != dist.shape[1] or dist.shape[0] < 3:
        raise ValueError(f"dist must be an (n, n) tensor with n >= 3; got {getattr(dist, 'shape', dist)!r}")
    n = dist.shape[0]
    i, j = pair_index(n)
    dfull = dist.to(torch.float64)
    dg = dfull[i, j]
    if not bool(torch.isfinite(dg).all()) or bool((dg <= 0).any()):
        raise ValueError("dist must be finite and positive between distinct nodes (is the graph connected?)")
    dg_safe = dfull + torch.eye(n, dtype=torch.float64)               # the diagonal is masked out below
    weight = torch.zeros(n, n, dtype=torch.float64)
    weight[i, j] = 1.0 / len(dg)
    gen = torch.Generator().manual_seed(cfg.seed)
    points, log_s, learnable = _init(manifold, cfg.restarts, n, float(dg.max()), cfg, gen)
    points.requires_grad_(True)
    log_s.requires_grad_(True)
    groups = [{"params": [points], "manifold": manifold}]
    if cfg.learn_scale and bool(learnable.any()):
        groups.append({"params": [log_s], "manifold": Euclidean()})
    opt = RiemannianAdam(groups, lr=cfg.lr)
    mask = learnable.to(torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 40-node tensors are far too small to share between threads
    try:
        for step in range(cfg.steps):
            frac = 0.5 * (1.0 + math.cos(math.pi * step / max(cfg.steps - 1, 1)))
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (cfg.lr_final + (1.0 - cfg.lr_final) * frac)
            opt.zero_grad(set_to_none=True)
            d = pairwise_distances(manifold, points, torch.exp(log_s * mask))
            _masked_loss(d, dg_safe, weight).sum().backward()
            opt.step()
            if on_step is not None:
                on_step(1)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        scales = torch.exp(log_s * mask)
        d = pairwise_distances(manifold, points, scales)[..., i, j]
        losses = distortion_loss(d, dg)
        avg = average_distortion(d, dg)
        best = int(torch.argmin(losses))
        curv = tuple(0.0 if m.sign == 0 else m.sign / float(scales[best, k]) ** 2
                     for k, (m, _) in enumerate(manifold.factors))
        return EmbeddingResult(
            signature=format_signature(manifold),
            points=points[best].detach().clone(),
            scales=tuple(float(s) for s in scales[best]),
            curvatures=curv,
            loss=float(losses[best]),
            avg_distortion=float(avg[best]),
            worst_distortion=float(worst_case_distortion(d[best], dg)),
            restart_losses=tuple(float(v) for v in losses),
            restart_avg_distortions=tuple(float(v) for v in avg),
        )
