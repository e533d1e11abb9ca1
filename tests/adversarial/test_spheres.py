"""Adversarial spheres: the exact cap bound against Monte Carlo, and PGD on a cap-shaped error set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from moescope import geometry as geo
from moescope.adversarial import spheres as S


class CapModel(nn.Module):
    """Calls a point 'outer' (class 1) iff x₁ >= t·‖x‖: its error set on the inner sphere is a cap."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, x):
        s = 50.0 * (x[:, 0] - self.t * x.norm(dim=1))
        return torch.stack([torch.zeros_like(s), s], 1)


def _chord_to_cap(x1: np.ndarray, t: float) -> np.ndarray:
    """Hand-derived: a unit point at angle θ from the pole is 2 sin((θ − θ_t)/2) from the cap {θ <= θ_t}."""
    gap = np.maximum(0.0, np.arccos(np.clip(x1, -1, 1)) - math.acos(t))
    return 2.0 * np.sin(gap / 2.0)


@pytest.mark.parametrize(("mu", "d"), [(0.01, 50), (1e-4, 200), (0.3, 10), (0.7, 20)])
def test_cap_height_inverts_cap_mass(mu, d):
    assert geo.cap_mass(S.cap_height(mu, d), d) == pytest.approx(mu, rel=1e-9)


@pytest.mark.parametrize(("mu", "d"), [(0.01, 50), (0.1, 10), (0.6, 8)])
def test_isoperimetric_bounds_match_monte_carlo(mu, d):
    b = S.isoperimetric_bounds(mu, d)
    x1 = geo.sample_sphere(200_000, d, 0)[:, 0]
    dist = _chord_to_cap(x1, b["cap_height"])
    se = dist.std() / math.sqrt(dist.size)
    assert abs(dist.mean() - b["mean"]) < 4 * se
    assert b["median"] == pytest.approx(float(np.median(dist)), abs=0.01)
    assert S.isoperimetric_bounds(mu, d, radius=2.0)["mean"] == pytest.approx(2 * b["mean"])


def test_gaussian_approximation_in_high_dimension():
    b = S.isoperimetric_bounds(1e-3, 20_000)
    assert b["median"] == pytest.approx(b["gaussian"], rel=2e-3)
    assert b["gaussian"] == pytest.approx(stats.norm.isf(1e-3) / math.sqrt(20_000))


def test_error_measure_and_on_sphere_pgd_on_a_cap():
    """The cap is the extremal error set: PGD's distances are the exact chords, the mean is the bound."""
    d, mu = 30, 0.02
    t = S.cap_height(mu, d)
    model = CapModel(t)
    em = S.error_measure(model, d, samples=40_000, generator=torch.Generator().manual_seed(0))
    lo, hi = em.interval
    assert lo <= mu <= hi
    x = geo.sample_sphere(300, d, torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x[x[:, 0] < t]
    adv, found = S.on_sphere_pgd(model, x, torch.zeros(len(x), dtype=torch.long), step=0.01, steps=400)
    assert found.all()
    torch.testing.assert_close(adv.norm(dim=1), torch.ones(len(x), dtype=torch.float64))
    measured = S.distances(x, adv)
    np.testing.assert_allclose(measured, _chord_to_cap(x[:, 0].numpy(), t), atol=1e-4)
    bound = S.isoperimetric_bounds(mu, d)
    # points inside the cap are at distance 0 and were left out: put them back for the mean over the sphere
    inside = 300 - len(x)
    mean = measured.sum() / (len(measured) + inside)
    assert mean == pytest.approx(bound["mean"], rel=0.1)


def test_sample_spheres_radii_and_labels():
    x, y = S.sample_spheres(1000, 20, torch.Generator().manual_seed(0))
    r = x.norm(dim=1)
    torch.testing.assert_close(r[y == 0], torch.ones(int((y == 0).sum())))
    torch.testing.assert_close(r[y == 1], torch.full((int((y == 1).sum()),), 1.3))
    assert 400 < int(y.sum()) < 600


def test_training_lowers_the_error():
    d = 10
    model = S.sphere_classifier(d, hidden=32, seed=0)
    gen = torch.Generator().manual_seed(5)
    x, y = S.sample_spheres(2000, d, gen)
    with torch.no_grad():
        before = float((model(x).argmax(1) == y).float().mean())
    saved = S.train_spheres(model, d, steps=150, checkpoints=(50,), lr=3e-3, seed=0)
    assert sorted(saved) == [50, 150] and not model.training
    with torch.no_grad():
        after = float((model(x).argmax(1) == y).float().mean())
    assert after > max(before, 0.9)


def test_bad_mu():
    with pytest.raises(ValueError, match=r"mu must lie in \(0, 1\); got mu=0.0"):
        S.cap_height(0.0, 10)
