r"""Adversarial Spheres (Gilmer et al. 2018): small error sets imply nearby errors.

Gilmer, Metz, Faghri, Schoenholz, Raghu, Wattenberg and Goodfellow, *Adversarial Spheres*,
ICLR workshop 2018. Two concentric spheres in R^d, radius 1 (class 0) and 1.3 (class 1).
A classifier that errs on a set E of the inner sphere with measure μ = σ(E) has, by Lévy's
isoperimetric inequality on the sphere, its ε-neighbourhoods of E at least as large as those
of a polar cap C of the same measure, for every ε. So the distance from a uniform point x to
the nearest error is stochastically smaller than its distance to C, and

.. math:: \mathbb E\, d(x, E) \le \mathbb E\, d(x, C), \qquad
          \mathrm{median}\, d(x, E) \le \mathrm{median}\, d(x, C)
          \approx \Phi^{-1}(1 - \mu) / \sqrt d

(the paper's Theorem 5.1 in its Gaussian approximation). Here the cap side is exact: the cap
C = {x₁ ≥ t} with ``cap_mass(t, d) = μ`` from :mod:`moescope.geometry.sphere`; a point at
angle θ from the pole is at chordal distance 2 sin((θ − θ_t)/2) from C, and both the median
and the mean of that distance come from the exact coordinate law.

Measured side: μ by sampling the inner sphere (with a Clopper–Pearson interval), and the
distance to the nearest error by PGD constrained to the sphere (the paper's "manifold
attack"): normalised gradient steps projected back onto the sphere, then a bisection on the
last step. A found error is an upper bound on the distance to the nearest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch import nn

from moescope import geometry as geo
from moescope.adversarial._common import Classifier, check_eps, check_steps, eval_mode, loss_gradient
from moescope.adversarial.data import seeded

__all__ = [
    "RADII",
    "ErrorMeasure",
    "cap_height",
    "error_measure",
    "isoperimetric_bounds",
    "on_sphere_pgd",
    "sample_spheres",
    "sphere_classifier",
    "train_spheres",
]

RADII = (1.0, 1.3)  # the paper's inner and outer radii


def sample_spheres(n: int, d: int, generator: torch.Generator, radii: tuple[float, float] = RADII,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """n points (n, d), each uniform on the inner (label 0) or outer (label 1) sphere, with
    probability 1/2 each; labels (n,)."""
    y = torch.randint(0, 2, (n,), generator=generator)
    u = geo.sample_sphere(n, d, generator, dtype=torch.float32)
    r = torch.tensor(radii, dtype=torch.float32)[y]
    return u * r.unsqueeze(1), y


def sphere_classifier(d: int, *, hidden: int = 256, seed: int = 0) -> nn.Sequential:
    """A ReLU MLP d → hidden → hidden → 2 (the paper used 1000 units and batch norm)."""
    with seeded(seed):
        return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 2))


def train_spheres(model: nn.Module, d: int, *, steps: int, checkpoints: tuple[int, ...] = (), batch_size: int = 128,
                  lr: float = 1e-3, seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    """Adam on fresh samples every step (the paper's infinite-data regime).

    Returns:
        {step: state_dict copy} at each requested checkpoint (and at ``steps``); the model ends
        in eval mode with the final weights.
    """
    steps = check_steps(steps, minimum=1)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    saved = {}
    keep = set(checkpoints) | {steps}
    model.train()
    for step in range(1, steps + 1):
        x, y = sample_spheres(batch_size, d, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in keep:
            saved[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt.zero_grad(set_to_none=True)
    model.eval()
    return saved


@dataclass(frozen=True)
class ErrorMeasure:
    """μ, the measure of the error set on one sphere, from ``samples`` uniform points."""

    errors: int
    samples: int
    confidence: float

    @property
    def mu(self) -> float:
        return self.errors / self.samples

    @property
    def interval(self) -> tuple[float, float]:
        """Clopper–Pearson (exact binomial) interval for μ."""
        a = (1 - self.confidence) / 2
        lo = 0.0 if self.errors == 0 else float(stats.beta.ppf(a, self.errors, self.samples - self.errors + 1))
        hi = 1.0 if self.errors == self.samples else float(
            stats.beta.ppf(1 - a, self.errors + 1, self.samples - self.errors))
        return lo, hi


@torch.no_grad()
def error_measure(model: nn.Module, d: int, *, samples: int, generator: torch.Generator, radius: float = RADII[0],
                  label: int = 0, chunk: int = 20_000, confidence: float = 0.95) -> ErrorMeasure:
    """Count misclassified points among ``samples`` uniform points of the sphere of ``radius``."""
    samples = check_steps(samples, name="samples", minimum=1)
    errors = 0
    with eval_mode(model):
        for start in range(0, samples, chunk):
            n = min(chunk, samples - start)
            x = geo.sample_sphere(n, d, generator, dtype=torch.float32) * radius
            errors += int((model(x).argmax(1) != label).sum())
    return ErrorMeasure(errors=errors, samples=samples, confidence=confidence)


def _to_sphere(x: torch.Tensor, radius: float) -> torch.Tensor:
    return x * (radius / torch.linalg.vector_norm(x, dim=1, keepdim=True))


def on_sphere_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, radius: float = RADII[0],
                  step: float = 0.01, steps: int = 300, bisections: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on the sphere ‖x‖ = radius: ascend the loss of y along the tangent plane.

    Each step moves ``step`` along the normalised tangential gradient and projects back onto
    the sphere; a point stops at its first misclassified iterate, refined by bisection
    between the last correct iterate and it (both on the sphere).

    Args:
        x: (N, d) points on the sphere; y: (N,) their labels.

    Returns:
        (x_adv (N, d) on the sphere, found (N,) bool: the label changed within ``steps``).
    """
    step = check_eps(step, name="step")
    steps = check_steps(steps)
    f = Classifier(model)
    x0 = _to_sphere(x.detach(), radius)
    cur, prev = x0.clone(), x0.clone()
    found = torch.zeros(len(x0), dtype=torch.bool)
    with eval_mode(model):
        for _ in range(steps):
            todo = ~found
            if not bool(todo.any()):
                break
            xs = cur[todo]
            g = loss_gradient(f, xs, y[todo], targeted=False)
            radial = (g * xs).sum(1, keepdim=True) / radius**2
            g = g - radial * xs                                              # tangent component
            g = g / torch.linalg.vector_norm(g, dim=1, keepdim=True).clamp_min(1e-30)
            nxt = _to_sphere(xs + step * g, radius)
            prev[todo], cur[todo] = xs, nxt
            found[todo] = f.predict(nxt) != y[todo]
        lo, hi = prev[found], cur[found]
        yf = y[found]
        for _ in range(bisections):  # on the arc between the last correct and the first wrong point
            mid = _to_sphere(lo + hi, radius)
            wrong = f.predict(mid) != yf
            hi = torch.where(wrong.unsqueeze(1), mid, hi)
            lo = torch.where(wrong.unsqueeze(1), lo, mid)
        cur[found] = hi
    return cur.detach(), found


def cap_height(mu: float, d: int) -> float:
    """t with P(x₁ >= t) = μ on S^{d−1}: the polar cap holding mass μ."""
    if not 0.0 < mu < 1.0:
        raise ValueError(f"mu must lie in (0, 1); got mu={mu!r}")
    if mu <= 0.5:
        return float(geo.band_quantile(1.0 - 2.0 * mu, d))
    return -float(geo.band_quantile(2.0 * mu - 1.0, d))


def isoperimetric_bounds(mu: float, d: int, radius: float = RADII[0]) -> dict:
    """Largest possible median and mean distance to an error set of measure μ (a cap's).

    Chordal distances on the sphere of ``radius``: a point at angle θ from the pole is at
    radius·2 sin((θ − θ_t)/2) from the cap {θ ≤ θ_t}. ``gaussian`` is the paper's
    Φ⁻¹(1 − μ)/√d (times the radius).
    """
    t = cap_height(mu, d)
    theta_t = math.acos(max(-1.0, min(1.0, t)))
    median_angle = max(0.0, math.pi / 2 - theta_t)                  # median point: x₁ = 0
    r_max = 2.0 * math.sin((math.pi - theta_t) / 2.0)

    def tail(r: float) -> float:  # P(distance > r) = P(x₁ < cos(θ_t + 2 asin(r/2)))
        return float(geo.coordinate_cdf(math.cos(theta_t + 2.0 * math.asin(min(1.0, r / 2.0))), d))

    kink = 2.0 * math.sin(median_angle / 2.0)  # where the integrand bends most: help quad find it
    mean, _ = integrate.quad(tail, 0.0, r_max, limit=200, points=[kink] if 0.0 < kink < r_max else None)
    return {
        "mu": mu,
        "cap_height": t,
        "median": radius * 2.0 * math.sin(median_angle / 2.0),
        "mean": radius * mean,
        "gaussian": radius * float(stats.norm.ppf(1.0 - mu)) / math.sqrt(d),
    }


def distances(x0: torch.Tensor, x_adv: torch.Tensor) -> np.ndarray:
    """Euclidean (chordal) distances per row, as float64 numpy."""
    return torch.linalg.vector_norm((x_adv - x0).double(), dim=1).numpy()
