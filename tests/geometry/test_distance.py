"""Distance law of random points on the sphere, and Beyer et al.'s relative contrast."""

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from moescope import geometry as geo


def test_hand_derived_means():
    # d = 2: D = 2 sin(phi/2) with phi uniform on [0, pi]: E D = 4/pi.
    assert geo.distance_mean(2) == pytest.approx(4 / math.pi, rel=1e-15)
    # d = 3: cos uniform on [-1, 1], D = sqrt(2 - 2c): E D = int_{-1}^{1} sqrt(2-2c)/2 dc = 4/3.
    assert geo.distance_mean(3) == pytest.approx(4 / 3, rel=1e-15)


@pytest.mark.parametrize("d", [4, 77, 10**4, 10**7])
def test_mean_matches_mpmath_beta_moment(d):
    # D^2/4 ~ Beta(a, a): E D = 2 B(a + 1/2, a) / B(a, a).
    with mp.workdps(40):
        a = mp.mpf(d - 1) / 2
        ref = 2 * mp.beta(a + mp.mpf(1) / 2, a) / mp.beta(a, a)
    assert geo.distance_mean(d) == pytest.approx(float(ref), rel=1e-13)
    assert geo.distance_std(d) ** 2 + geo.distance_mean(d) ** 2 == pytest.approx(2.0, rel=1e-14)


@pytest.mark.parametrize("d", [2, 3, 10, 300])
def test_cdf_against_scipy_beta_and_pdf(d):
    a = (d - 1) / 2
    r = np.linspace(0.01, 1.99, 37)
    np.testing.assert_allclose(geo.distance_cdf(r, d), stats.beta(a, a).cdf(r**2 / 4), rtol=1e-10, atol=1e-300)
    total = integrate.quad(lambda x: geo.distance_pdf(x, d), 0, 2, points=[math.sqrt(2)], limit=200)[0]
    assert total == pytest.approx(1.0, abs=1e-7)
    q = geo.distance_quantile(0.3, d)
    assert geo.distance_cdf(q, d) == pytest.approx(0.3, rel=1e-9)


def test_monte_carlo_distances_follow_the_law():
    d = 40
    x = geo.sample_sphere(4000, d, np.random.default_rng(5))
    dist = np.linalg.norm(x[:2000] - x[2000:], axis=1)
    assert stats.kstest(dist, lambda r: geo.distance_cdf(r, d)).pvalue > 1e-3
    assert abs(dist.mean() - geo.distance_mean(d)) < 5 * geo.distance_std(d) / math.sqrt(dist.size)


def test_relative_contrast_shrinks_like_one_over_sqrt_d():
    small = np.median(geo.relative_contrast_mc(300, 100, 30, np.random.default_rng(0)))
    large = np.median(geo.relative_contrast_mc(300, 10_000, 30, torch.Generator().manual_seed(0)))
    assert 7 < small / large < 13  # sqrt(10_000 / 100) = 10
    pred = geo.relative_contrast_prediction(300, [100, 10_000])
    assert small == pytest.approx(pred[0], rel=0.15)
    assert large == pytest.approx(pred[1], rel=0.15)


def test_relative_contrast_by_hand_and_errors():
    np.testing.assert_allclose(geo.relative_contrast(np.array([[1.0, 2.0, 4.0]])), [3.0])
    torch.testing.assert_close(geo.relative_contrast(torch.tensor([2.0, 3.0])), torch.tensor(0.5))
    with pytest.raises(ValueError, match=">= 2 distances"):
        geo.relative_contrast(np.array([1.0]))
    with pytest.raises(ValueError, match="coincides"):
        geo.relative_contrast(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="n_points=1"):
        geo.relative_contrast_mc(1, 3, 2)
