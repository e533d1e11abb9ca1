r"""Distance to the decision boundary along the adversarial direction and along random ones.

The "shortcut" of the lecture, measured. Near a point x at distance r from a locally flat
boundary with unit normal n, the line through x along a random unit direction u meets the
boundary at distance r / |cos(u, n)|. The cosine of a uniform direction with a fixed normal
is one coordinate of a uniform point on S^{d−1}, whose exact law is in
:mod:`moescope.geometry.sphere`, so the ratio R = (random distance) / (adversarial distance)
has

.. math:: P(R \le \rho) = P(|\cos| \ge 1/\rho) = 1 - \mathrm{band\_mass}(1/\rho, d),
          \qquad \mathrm{median}(R) = 1 / \mathrm{band\_quantile}(1/2, d)
          \;\sim\; \sqrt d / \Phi^{-1}(3/4) = \sqrt d / 0.6745.

Fawzi, Moosavi-Dezfooli and Frossard, *Robustness of classifiers: from adversarial to random
noise*, NeurIPS 2016, Theorem 1 (random subspaces of dimension m = 1): random noise must be
about √d times larger than the adversarial one. Here the adversarial direction is DeepFool's
(the normal of the nearest linearised boundary), and both distances are measured the same
way, by a line search on the model's predicted label — nothing is assumed linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from moescope import geometry as geo
from moescope.adversarial._common import (
    Classifier,
    Clip,
    Preprocessing,
    check_clip,
    check_inputs,
    check_norm,
    clamp,
    eval_mode,
    flat_norm,
    labels_or_predictions,
    loss_gradient,
)
from moescope.adversarial.deepfool import deepfool_search

__all__ = [
    "MEDIAN_ABS_NORMAL",
    "BoundaryDistances",
    "first_flip",
    "line_distance",
    "linear_ratio_sweep",
    "measure_boundary",
    "minimal_fast_gradient",
    "minimal_noise",
    "random_directions",
    "random_ratio_cdf",
    "random_ratio_quantile",
]

MEDIAN_ABS_NORMAL = float(stats.norm.ppf(0.75))  # 0.6745: median of |N(0, 1)|
BISECTIONS = 24      # relative precision 2^-24 ~ 6e-8 on each distance: float32 rounding
BOOTSTRAPS = 2000   # resamples of points for the median ratio's interval
CHUNK_ELEMENTS = 1 << 22  # floats per model call during a line search (16 MB in float32)


def random_ratio_quantile(q: object, d: object) -> float | np.ndarray:
    """q-quantile of R = 1/|cos θ| for a uniform direction in R^d: ``1 / band_quantile(1 - q, d)``."""
    q = np.asarray(q, dtype=np.float64)
    if np.any((q < 0) | (q >= 1)):
        raise ValueError(f"q must lie in [0, 1); got q={q}")
    out = 1.0 / np.asarray(geo.band_quantile(1.0 - q, d))
    return float(out) if out.ndim == 0 else out


def random_ratio_cdf(r: object, d: object) -> float | np.ndarray:
    """P(R <= r) = 1 − band_mass(1/r, d) for r >= 1, and 0 below 1 (R >= 1 always)."""
    r = np.asarray(r, dtype=np.float64)
    inv = np.where(r >= 1.0, 1.0 / np.maximum(r, 1.0), 1.0)
    out = np.where(r >= 1.0, 1.0 - np.asarray(geo.band_mass(inv, d)), 0.0)
    return float(out) if out.ndim == 0 else out


def random_directions(n: int, m: int, shape: tuple[int, ...], generator: torch.Generator,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, m, *shape) independent uniform unit directions (L2) in R^d, d = prod(shape)."""
    d = int(np.prod(shape))
    u = geo.sample_sphere(n * m, d, generator, dtype=dtype)
    return u.reshape(n, m, *shape)


@torch.no_grad()
def _flipped(f: Classifier, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, t: torch.Tensor,
             clip: Clip, rows: torch.Tensor) -> torch.Tensor:
    """Whether the label differs from y at clip(x + t·u), on the rays where ``rows`` is True.

    x (N, ...), u (N, M, ...), t and rows (N, M); rays outside ``rows`` are not evaluated (False).
    """
    n, m = t.shape
    out = torch.zeros(n * m, dtype=torch.bool)
    idx = rows.reshape(-1).nonzero().squeeze(1)                # flat ray indices to evaluate
    flat_u = u.reshape(n * m, *x.shape[1:])                    # (N·M, ...), a view
    flat_t = t.reshape(n * m, *([1] * (x.ndim - 1)))
    chunk = max(1, CHUNK_ELEMENTS // max(1, x[0].numel()))
    for i in range(0, len(idx), chunk):
        ray = idx[i : i + chunk]
        owner = ray // m
        pts = clamp(torch.addcmul(x[owner], flat_t[ray], flat_u[ray]), clip)
        out[ray] = f(pts).argmax(1) != y[owner]
    return out.reshape(n, m)


def first_flip(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    directions: torch.Tensor,
    *,
    t_max: float | torch.Tensor,
    t_start: float | torch.Tensor | None = None,
    clip: Clip = None,
    preprocessing: Preprocessing = None,
) -> torch.Tensor:
    """L2 distance along each ray x + t·u (t > 0, u normalised) to the first label change found.

    Doubling from ``t_start`` (default t_max / 2^20) until the label differs from y or t_max is
    passed, then 24 bisections. A label change narrower than the doubling grid can be missed.

    Args:
        x: (N, ...) points; y: (N,) labels (usually the predictions at x).
        directions: (N, M, ...) rays from each point (any nonzero length).
        t_max: (N,) or scalar: rays that flip nowhere up to here get ``inf``.

    Returns:
        (N, M) distances (inf where no flip within t_max).
    """
    clip = check_clip(clip)
    x, y = check_inputs(x, y, clip)
    if directions.ndim != x.ndim + 1 or directions.shape[0] != x.shape[0] or directions.shape[2:] != x.shape[1:]:
        raise ValueError(f"directions must have shape (N, M, ...) = ({x.shape[0]}, M, "
                         f"{', '.join(map(str, x.shape[1:]))}); got {tuple(directions.shape)}")
    n, m = directions.shape[:2]
    norms = flat_norm(directions.reshape(n * m, -1)).reshape(n, m)
    if bool((norms == 0).any()):
        raise ValueError("directions must be nonzero")
    u = directions / norms.reshape(n, m, *([1] * (x.ndim - 1)))
    t_max = torch.as_tensor(t_max, dtype=x.dtype).expand(n).reshape(n, 1).expand(n, m)
    hi = (t_max / 2.0**20).clone() if t_start is None else torch.as_tensor(t_start, dtype=x.dtype).expand(n).reshape(
        n, 1).expand(n, m).clone()
    lo = torch.zeros_like(hi)
    f = Classifier(model, preprocessing)
    with eval_mode(model):
        found = _flipped(f, x, y, u, hi, clip, torch.ones_like(hi, dtype=torch.bool))
        while True:  # double the rays that have not flipped yet
            todo = ~found & (hi < t_max)
            if not bool(todo.any()):
                break
            lo = torch.where(todo, hi, lo)
            hi = torch.where(todo, torch.minimum(2 * hi, t_max), hi)
            found = found | _flipped(f, x, y, u, hi, clip, todo)
        for _ in range(BISECTIONS):
            mid = (lo + hi) / 2
            flip = _flipped(f, x, y, u, mid, clip, found)
            hi = torch.where(found & flip, mid, hi)
            lo = torch.where(found & ~flip, mid, lo)
    return torch.where(found, hi, torch.inf)


def line_distance(model, x, y, directions, **kwargs) -> torch.Tensor:
    """Distance to the boundary along the *line* x ± t·u: the nearer of the two rays, (N, M)."""
    both = first_flip(model, x, y, torch.cat([directions, -directions], dim=1), **kwargs)
    m = directions.shape[1]
    return torch.minimum(both[:, :m], both[:, m:])


@dataclass(frozen=True)
class BoundaryDistances:
    """Per sample: the adversarial distance (N,), random-line distances (N, M), their ratio."""

    d: int
    adversarial: torch.Tensor
    random: torch.Tensor
    kept: torch.Tensor           # (N_in,) which input points were classified as y and measured

    @property
    def ratio(self) -> torch.Tensor:
        return self.random / self.adversarial.unsqueeze(1)

    def summary(self, *, independent: bool = False, seed: int = 0) -> dict:
        """Median ratio against the flat-boundary law, with a 99% interval for the median.

        Args:
            independent: the ratios are i.i.d. (true on an exactly flat boundary, where R = 1/|cos|
                does not depend on the point): use the distribution-free order-statistic interval.
                Otherwise ratios of one point share its local geometry, and the interval comes
                from a bootstrap over points (2000 resamples, seeded).
        """
        ratio = self.ratio.double().numpy()                           # (N, M)
        r = ratio.ravel()
        n = r.size
        med = float(np.median(r))
        if independent or ratio.shape[0] < 5:
            lo_k, hi_k = (int(v) for v in stats.binom.ppf([0.005, 0.995], n, 0.5))
            srt = np.sort(r)
            ci = [float(srt[max(lo_k - 1, 0)]), float(srt[min(hi_k, n - 1)])]
            method = "order statistics (independent ratios)"
        else:
            rng = np.random.default_rng(seed)
            picks = rng.integers(0, ratio.shape[0], size=(BOOTSTRAPS, ratio.shape[0]))
            meds = np.median(ratio[picks].reshape(BOOTSTRAPS, -1), axis=1)
            ci = [float(v) for v in np.quantile(meds, [0.005, 0.995])]
            method = f"bootstrap over points ({BOOTSTRAPS} resamples)"
        theory = float(random_ratio_quantile(0.5, self.d))
        return {
            "d": self.d,
            "points": int(self.adversarial.numel()),
            "directions_per_point": int(ratio.shape[1]),
            "adversarial_median": float(self.adversarial.median()),
            "random_median": float(np.median(self.random.double().numpy())),
            "median_ratio": med,
            "median_ratio_ci99": ci,
            "ci_method": method,
            "theory_median_ratio": theory,
            "asymptote": math.sqrt(self.d) / MEDIAN_ABS_NORMAL,
            "median_over_theory": med / theory,
            "share_below_theory_median": float(np.mean(r <= theory)),
            "no_flip_share": float(np.mean(~np.isfinite(r))),
        }


def measure_boundary(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    n_directions: int = 20,
    generator: torch.Generator | None = None,
    reach: float = 1e4,
    preprocessing: Preprocessing = None,
) -> BoundaryDistances:
    """Adversarial vs random-direction distances to the boundary, in the unbounded input space.

    Points not classified as y are dropped. The adversarial direction is DeepFool's total
    perturbation (no box); both distances come from :func:`line_distance`, searched up to
    ``reach`` times the DeepFool distance.
    """
    x, y = check_inputs(x, y, None)
    f = Classifier(model, preprocessing)
    with eval_mode(model):
        pred = f.predict(x)
    kept = pred == (pred if y is None else y)
    x, y = x[kept], pred[kept]
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    df = deepfool_search(model, x, y, clip=None, preprocessing=preprocessing)
    size = flat_norm(df.perturbation)
    ok = size > 0
    x, y, size, direction = x[ok], y[ok], size[ok], df.perturbation[ok]
    kept[kept.nonzero().squeeze(1)[~ok]] = False
    t_max = reach * size
    kw = {"t_max": t_max, "t_start": size / 8, "preprocessing": preprocessing}
    adversarial = line_distance(model, x, y, direction.unsqueeze(1), **kw).squeeze(1)
    u = random_directions(len(x), n_directions, tuple(x.shape[1:]), generator, dtype=x.dtype)
    rand = line_distance(model, x, y, u, **kw)
    return BoundaryDistances(d=int(np.prod(x.shape[1:])),
                             adversarial=adversarial, random=rand, kept=kept)


class _BinaryLinear(nn.Module):
    """Logits (0, w·x + b): an exactly flat boundary w·x + b = 0."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(torch.tensor(b, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


def linear_ratio_sweep(dims, *, points: int = 4, directions: int = 500, seed: int = 0) -> list[dict]:
    """The ratio on an exactly linear binary classifier in each d: the law's own check.

    A random normal w, points at random distances on the negative side; every measured
    ratio should follow :func:`random_ratio_cdf` exactly.
    """
    rows = []
    for d in dims:
        gen = torch.Generator().manual_seed(seed * 7919 + int(d))
        w = geo.sample_sphere(1, int(d), gen)[0]
        x = torch.randn(points, int(d), generator=gen)
        s = x @ w
        x = x - (s + 0.5 + torch.rand(points, generator=gen)).unsqueeze(1) * w  # margins in [0.5, 1.5]
        model = _BinaryLinear(w, 0.0)
        rows.append(measure_boundary(model, x, torch.zeros(points, dtype=torch.long), n_directions=directions,
                                     generator=gen).summary(independent=True))
    return rows


def _minimal_along(model, x, y, step, *, eps_max, clip, preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest ε with a label change along x + ε·step (clipped): (eps (N,), x_adv (N, ...))."""
    unit = flat_norm(step).clamp_min(1e-30)                        # ||step||_2: t = eps * unit
    t = first_flip(model, x, y, step.unsqueeze(1), t_max=eps_max * unit, t_start=eps_max * unit / 2**12,
                   clip=clip, preprocessing=preprocessing).squeeze(1)
    eps = t / unit
    scale = torch.where(torch.isfinite(eps), eps, 0.0).reshape(-1, *([1] * (x.ndim - 1)))
    return eps, clamp(x + scale * step, clip).detach()


def minimal_fast_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    norm: str = "linf",
    eps_max: float = 1.0,
    clip: Clip = (0.0, 1.0),
    preprocessing: Preprocessing = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest FGSM (L∞) or FGM (L2) step that flips each point, by a line search.

    FGSM's direction sign(∇ₓL) does not depend on ε, so the smallest ε is the first label
    change along the ray x + ε·sign(∇ₓL) (clipped), as in the DeepFool paper's comparison.

    Returns:
        (eps (N,), inf where no ε <= eps_max flips; x_adv (N, ...) at that ε, or x).
    """
    norm = check_norm(norm)
    clip = check_clip(clip)
    x, y = check_inputs(x, y, clip)
    f = Classifier(model, preprocessing)
    with eval_mode(model):
        y = labels_or_predictions(f, x, y)
        g = loss_gradient(f, x, y, targeted=False)
    step = g.sign() if norm == "linf" else g / flat_norm(g).clamp_min(1e-30).reshape(-1, *([1] * (x.ndim - 1)))
    return _minimal_along(model, x, y, step, eps_max=eps_max, clip=clip, preprocessing=preprocessing)


def minimal_noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    norm: str = "linf",
    eps_max: float = 1.0,
    clip: Clip = (0.0, 1.0),
    generator: torch.Generator | None = None,
    preprocessing: Preprocessing = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest random-sign (L∞) or random-direction (L2) noise ε·s that flips each point.

    One random s per point (the noise of :func:`~moescope.adversarial.attacks.random_noise`),
    then the same line search as :func:`minimal_fast_gradient`.
    """
    norm = check_norm(norm)
    clip = check_clip(clip)
    x, y = check_inputs(x, y, clip)
    f = Classifier(model, preprocessing)
    with eval_mode(model):
        y = labels_or_predictions(f, x, y)
    if norm == "linf":
        step = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2 - 1
    else:
        step = random_directions(len(x), 1, tuple(x.shape[1:]), generator or torch.Generator().manual_seed(0),
                                 dtype=x.dtype).squeeze(1)
    return _minimal_along(model, x, y, step, eps_max=eps_max, clip=clip, preprocessing=preprocessing)
