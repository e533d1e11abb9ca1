"""Boundary distances: hand-derived rays on a hyperplane, and the √d law across d = 10…10,000."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from moescope.adversarial import (
    first_flip,
    line_distance,
    linear_ratio_sweep,
    measure_boundary,
    minimal_fast_gradient,
    random_ratio_cdf,
    random_ratio_quantile,
)
from moescope.adversarial.boundary import MEDIAN_ABS_NORMAL, minimal_noise


class Halfspace(nn.Module):
    """Class 1 where w·x > c: logits (0, w·x − c)."""

    def __init__(self, w: torch.Tensor, c: float):
        super().__init__()
        self.w, self.c = w, c

    def forward(self, x):
        s = x.flatten(1) @ self.w - self.c
        return torch.stack([torch.zeros_like(s), s], 1)


def test_ratio_law_hand_values():
    # d = 3: a sphere coordinate is uniform on [-1, 1] (Archimedes), |cos| uniform on [0, 1],
    # so R = 1/|cos| has median 2 and P(R <= r) = 1 - 1/r.
    assert random_ratio_quantile(0.5, 3) == pytest.approx(2.0, rel=1e-12)
    assert random_ratio_cdf(4.0, 3) == pytest.approx(0.75, rel=1e-12)
    assert random_ratio_cdf(0.5, 3) == 0.0
    # large d: |cos|·√d -> |N(0, 1)|, median sqrt(d) / 0.6745
    assert random_ratio_quantile(0.5, 10**8) == pytest.approx(1e4 / MEDIAN_ABS_NORMAL, rel=1e-6)
    q = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(random_ratio_cdf(random_ratio_quantile(q, 50), 50), q, rtol=1e-10)
    with pytest.raises(ValueError, match=r"q must lie in \[0, 1\)"):
        random_ratio_quantile(1.0, 10)


def test_ray_distances_on_a_hyperplane_are_margin_over_cosine():
    d = 40
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    w /= w.norm()
    model = Halfspace(w, 1.0)
    x = torch.randn(3, d, generator=gen, dtype=torch.float64)
    x -= (x @ w - 0.2).unsqueeze(1) * w                    # w·x = 0.2: margin 0.8 to the plane w·x = 1
    u = torch.randn(3, 50, d, generator=gen, dtype=torch.float64)
    got = first_flip(model, x, torch.zeros(3, dtype=torch.long), u, t_max=1e4)
    cos = (u @ w) / u.norm(dim=2)                          # (3, 50)
    expected = torch.where(cos > 0, 0.8 / cos, torch.inf)
    finite = torch.isfinite(expected) & (expected < 1e4)
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-6, atol=0)
    assert torch.isinf(got[cos <= 0]).all()
    line = line_distance(model, x, torch.zeros(3, dtype=torch.long), u, t_max=1e4)
    torch.testing.assert_close(line[finite], expected[finite], rtol=1e-6, atol=0)  # the far side never flips


def test_sqrt_d_ratio_on_linear_models_across_dimensions():
    """On an exactly linear classifier the ratio R is 1/|cos| with cos ~ the exact sphere law.

    Stated tolerance: for each d in 10…10,000 (500 independent ratios per d, seed 0) the
    measured median lies within 15% of 1/band_quantile(½, d) (about 2.6 standard errors), the
    count below the exact median passes a two-sided binomial test at 1e-3, and 1/R passes a KS
    test against the exact |cos| law at 1e-3.
    """
    rows = linear_ratio_sweep((10, 100, 1000, 10_000), points=2, directions=250, seed=0)
    for r in rows:
        n = r["points"] * r["directions_per_point"]
        assert n == 500 and r["no_flip_share"] < 0.05
        assert abs(r["median_over_theory"] - 1) < 0.15, r
        below = round(r["share_below_theory_median"] * n)
        assert stats.binomtest(below, n, 0.5).pvalue > 1e-3, r
        assert r["theory_median_ratio"] == pytest.approx(math.sqrt(r["d"]) / 0.6745, rel=0.1)
    assert rows[-1]["median_ratio"] / rows[0]["median_ratio"] == pytest.approx(math.sqrt(1000), rel=0.25)


def test_measured_ratios_follow_the_exact_law_ks():
    from moescope.adversarial.boundary import _BinaryLinear

    d = 200
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(d, generator=gen)
    w /= w.norm()
    noise = torch.randn(2, d, generator=gen)
    x = noise - (noise @ w - (-0.7)).unsqueeze(1) * w       # w·x = −0.7: distance 0.7 to the plane
    bd = measure_boundary(_BinaryLinear(w, 0.0), x, torch.zeros(2, dtype=torch.long), n_directions=200,
                          generator=gen)
    r = bd.ratio.flatten().double().numpy()
    r = r[np.isfinite(r)]
    p = stats.kstest(r, lambda v: random_ratio_cdf(v, d)).pvalue
    assert p > 1e-3
    torch.testing.assert_close(bd.adversarial, torch.full((2,), 0.7), rtol=1e-5, atol=0)


def test_measure_boundary_drops_misclassified_points(digits_models, batch):
    model = digits_models[0]
    x, y = batch
    y = y.clone()
    y[:3] = (y[:3] + 1) % 10
    bd = measure_boundary(model, x[:10], y[:10], n_directions=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ok = model(x[:10]).argmax(1) == y[:10]
    assert torch.equal(bd.kept, ok)
    assert bd.random.shape == (int(ok.sum()), 3) and bd.d == 64
    assert (bd.ratio[torch.isfinite(bd.ratio)] >= 0.99).float().mean() > 0.9  # mostly beyond the adversarial


def test_minimal_fast_gradient_is_the_linearity_law():
    """On a half-space, FGSM's smallest flipping ε is margin/‖w‖₁ and FGM's is margin/‖w‖₂."""
    d = 100
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    x = torch.randn(4, d, generator=gen, dtype=torch.float64)
    margin = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    x -= ((x @ w + margin) / (w @ w)).unsqueeze(1) * w     # w·x = −margin
    model = Halfspace(w, 0.0)
    y = torch.zeros(4, dtype=torch.long)
    eps, adv = minimal_fast_gradient(model, x, y, clip=None, eps_max=10.0)
    torch.testing.assert_close(eps, margin / w.abs().sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(adv - x, eps.unsqueeze(1) * w.sign())
    eps2, _ = minimal_fast_gradient(model, x, y, norm="l2", clip=None, eps_max=100.0)
    torch.testing.assert_close(eps2, margin / w.norm(), rtol=1e-6, atol=0)
    noise, _ = minimal_noise(model, x, y, clip=None, eps_max=1e3, generator=torch.Generator().manual_seed(3))
    assert (noise[torch.isfinite(noise)] > eps[torch.isfinite(noise)] * 2).all()  # random signs: ~‖w‖₂ not ‖w‖₁


def test_bad_directions_shape(digits_models, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"directions must have shape \(N, M, ...\)"):
        first_flip(digits_models[0], x, y, torch.ones(40, 64), t_max=1.0)
    with pytest.raises(ValueError, match="directions must be nonzero"):
        first_flip(digits_models[0], x, y, torch.zeros(40, 1, 1, 8, 8), t_max=1.0)
