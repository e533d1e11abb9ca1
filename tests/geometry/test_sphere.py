"""Sphere-coordinate laws: hand-derived values, scipy and mpmath oracles, properties, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from moescope import geometry as geo

DIMS = [2, 3, 4, 10, 100, 1000, 12_345, 10**5, 10**6, 10**7]


def _t_grid(d):
    """Points across the body, the convergence boundary, the tails and 1e-300 masses."""
    a = (d - 1) / 2
    scale = 1 / math.sqrt(d)
    boundary = math.sqrt(1.5 / (a + 2.5))
    pts = [1e-9, 0.3 * scale, scale, 0.999 * boundary, 1.001 * boundary, 2 * scale, 5 * scale,
           math.sqrt(2 * 600 / d), math.sqrt(2 * 680 / d), 0.05, 0.3, 0.7, 0.99]
    return sorted({p for p in pts if 0 < p < 1})


@pytest.mark.parametrize("d", DIMS)
def test_cap_and_band_match_mpmath(d, two_caps_ref):
    """Relative error <= 1e-10 (the issue's bar; we reach ~1e-13) wherever the mass is a double."""
    ts = np.array(_t_grid(d))
    caps = np.asarray(geo.cap_mass(ts, d))
    band = np.asarray(geo.band_mass(ts, d))
    for t, cap, b in zip(ts, caps, band, strict=True):
        ref2 = two_caps_ref(float(t), d)
        ref_cap = float(ref2 / 2)
        if ref_cap < 1e-300:
            continue
        assert cap == pytest.approx(ref_cap, rel=1e-10), (d, t)
        assert b == pytest.approx(float(1 - ref2), rel=1e-10, abs=0), (d, t)


@pytest.mark.parametrize(("t", "d"), [(0.5, 10**6), (0.99, 1000), (0.1, 10**7), (0.4, 12_345)])
def test_log_cap_mass_far_below_underflow(t, d, two_caps_ref):
    import mpmath as mp

    ref = float(mp.log(two_caps_ref(t, d) / 2))
    assert ref < -700  # the mass itself is not a double
    assert geo.log_cap_mass(t, d) == pytest.approx(ref, rel=1e-13)
    assert geo.cap_mass(t, d) == 0.0


@pytest.mark.parametrize("d", [2, 3, 5, 30, 200, 1000])
def test_against_scipy_beta(d):
    """scipy.stats.beta is accurate for moderate d: x_1^2 ~ Beta(1/2, (d-1)/2)."""
    t = np.linspace(0.0, 0.999, 57)
    law = stats.beta(0.5, (d - 1) / 2)
    np.testing.assert_allclose(geo.band_mass(t, d), law.cdf(t**2), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(geo.cap_mass(t, d), law.sf(t**2) / 2, rtol=1e-11, atol=1e-300)
    inner = t[1:-1]
    np.testing.assert_allclose(geo.coordinate_pdf(inner, d), law.pdf(inner**2) * np.abs(inner), rtol=1e-11)


def test_hand_derived_low_dimensions():
    t = np.linspace(-0.99, 0.99, 21)
    # d = 2: x_1 = cos(phi), phi uniform: P(x_1 >= t) = arccos(t)/pi, density 1/(pi sqrt(1-t^2)).
    np.testing.assert_allclose(geo.cap_mass(t, 2), np.arccos(t) / np.pi, rtol=1e-14)
    np.testing.assert_allclose(geo.coordinate_pdf(t, 2), 1 / (np.pi * np.sqrt(1 - t**2)), rtol=1e-14)
    # d = 3: Archimedes' hat-box theorem: x_1 is uniform on [-1, 1].
    np.testing.assert_allclose(geo.cap_mass(t, 3), (1 - t) / 2, rtol=1e-14)
    np.testing.assert_allclose(geo.coordinate_pdf(t, 3), 0.5, rtol=1e-15)
    assert geo.coordinate_pdf(1.0, 3) == pytest.approx(0.5, rel=1e-15) and geo.coordinate_pdf(1.5, 3) == 0.0
    assert geo.band_mass(0.1, 1000) == pytest.approx(0.998464286, rel=1e-8)


@settings(max_examples=60, deadline=None)
@given(eps=st.floats(0.0, 1.0), d=st.integers(2, 10**7))
def test_band_plus_two_caps_is_one(eps, d):
    assert geo.band_mass(eps, d) + 2 * geo.cap_mass(eps, d) == pytest.approx(1.0, abs=4e-15)


@settings(max_examples=60, deadline=None)
@given(t=st.floats(-1.0, 1.0), d=st.integers(2, 10**7))
def test_symmetry_of_the_law(t, d):
    assert geo.coordinate_cdf(t, d) + geo.coordinate_cdf(-t, d) == pytest.approx(1.0, abs=4e-15)
    assert geo.coordinate_pdf(t, d) == geo.coordinate_pdf(-t, d)


@settings(max_examples=40, deadline=None)
@given(d=st.integers(2, 10**6), lo=st.floats(0.0, 1.0), hi=st.floats(0.0, 1.0))
def test_monotone_in_eps_and_in_d(d, lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    assert geo.band_mass(lo, d) <= geo.band_mass(hi, d)
    assert geo.log_cap_mass(hi, d) <= geo.log_cap_mass(lo, d)
    # the equator's share only grows with d
    assert geo.band_mass(lo, d) <= geo.band_mass(lo, d + 1) + 1e-15


@pytest.mark.parametrize("d", [2, 5, 50, 5000])
def test_density_integrates_to_one(d):
    from scipy import integrate

    lim = min(1.0, 12 / math.sqrt(d))
    total = integrate.quad(lambda t: geo.coordinate_pdf(t, d), -lim, lim, points=[0.0], limit=200)[0]
    assert total == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("d", [3, 50, 500])
def test_monte_carlo_band_within_stated_band(d):
    """Seeded sample; the exact mass must sit within 4.5 binomial standard errors (p ~ 7e-6)."""
    n = 40_000
    x1 = geo.sample_sphere(n, d, np.random.default_rng(1234 + d))[:, 0]
    for eps in (0.05, 0.1, 0.3):
        p = geo.band_mass(eps, d)
        se = math.sqrt(p * (1 - p) / n)
        assert abs(np.mean(np.abs(x1) <= eps) - p) <= 4.5 * se + 1e-12


def test_sample_sphere_shapes_types_and_seeds():
    x = geo.sample_sphere(100, 7, 3)
    assert isinstance(x, np.ndarray) and x.shape == (100, 7)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(x, geo.sample_sphere(100, 7, 3))
    t = geo.sample_sphere(50, 4, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    torch.testing.assert_close(t, geo.sample_sphere(50, 4, torch.Generator().manual_seed(0), dtype=torch.float64))
    assert geo.sample_sphere(0, 3, 0).shape == (0, 3)
    with pytest.raises(TypeError, match="generator"):
        geo.sample_sphere(3, 3, "seed")


def test_capacity_solves_its_union_bound():
    for eps, d in [(0.1, 1000), (0.2, 1000), (0.3, 100)]:
        n = geo.near_orthogonal_capacity(eps, d, 0.01)
        p = 2 * geo.cap_mass(eps, d)
        assert n * (n - 1) / 2 * p <= 0.01 < (n + 1) * n / 2 * p
        # the sub-Gaussian guarantee is weaker than the exact tail
        assert geo.log_subgaussian_capacity(eps, d, 0.01) <= geo.log_near_orthogonal_capacity(eps, d, 0.01)
    assert geo.near_orthogonal_capacity(0.1, 10**6) == math.inf  # 10^(huge): overflows to inf
    assert geo.log_near_orthogonal_capacity(0.1, 10**6) > 1000
    # Welch: zero coherence allows exactly d vectors (an orthonormal basis); no limit once d eps^2 >= 1.
    assert geo.welch_capacity(0.0, 17) == 17
    assert geo.welch_capacity(0.1, 50) == math.floor(50 * 0.99 / 0.5)
    assert geo.welch_capacity(0.1, 100) == math.inf


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: geo.band_mass(0.1, 1), "d must be an integer >= 2.*d=1"),
        (lambda: geo.band_mass(0.1, 2.5), "d=2.5"),
        (lambda: geo.cap_mass(0.1, float("nan")), "d=nan"),
        (lambda: geo.band_mass(-0.1, 10), r"eps must lie in \[0, 1\].*eps=-0.1"),
        (lambda: geo.band_mass(1.5, 10), "eps=1.5"),
        (lambda: geo.band_mass(float("nan"), 10), "eps must not be NaN"),
        (lambda: geo.cap_mass(float("nan"), 10), "t must not be NaN"),
        (lambda: geo.band_mass([0.1, 0.2], [3, 1]), "d=1"),
        (lambda: geo.log_near_orthogonal_capacity(0.1, 10, delta=1.5), "delta=1.5"),
        (lambda: geo.sample_sphere(-1, 3), "n=-1"),
    ],
)
def test_bad_input_names_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="broadcast"):
        geo.band_mass(np.zeros(3) + 0.1, np.array([2, 3]))
