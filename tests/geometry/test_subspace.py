"""Principal angles (scipy oracle, planted tiny angles, invariances) and the random null."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from moescope import geometry as geo


@pytest.mark.parametrize(("d", "p", "q"), [(10, 3, 5), (50, 7, 7), (6, 6, 2), (5, 1, 1), (200, 20, 3)])
def test_matches_scipy_subspace_angles(d, p, q):
    rng = np.random.default_rng(d * 100 + p * 10 + q)
    a, b = rng.standard_normal((d, p)), rng.standard_normal((d, q))
    np.testing.assert_allclose(geo.principal_angles(a, b), np.sort(scipy.linalg.subspace_angles(a, b)), atol=1e-13)


def test_batched_equals_one_by_one():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 30, 5, generator=g, dtype=torch.float64)
    b = torch.randn(30, 4, generator=g, dtype=torch.float64)  # broadcast against the batch
    got = geo.principal_angles(a, b)
    assert got.shape == (4, 3, 4)
    for i in range(4):
        for j in range(3):
            torch.testing.assert_close(got[i, j], geo.principal_angles(a[i, j], b), atol=1e-14, rtol=0)


@pytest.mark.parametrize("theta", [1e-14, 1e-10, 1e-6, 0.3, math.pi / 4, 1.2, math.pi / 2])
def test_planted_angles_to_absolute_precision(theta):
    """Two planes sharing e1, the second tilted by theta from e2 into e3 (exact answer)."""
    d = 6
    a = np.zeros((d, 2))
    a[0, 0] = a[1, 1] = 1.0
    b = np.zeros((d, 2))
    b[0, 0] = 1.0
    b[1, 1], b[2, 1] = math.cos(theta), math.sin(theta)
    mix = np.array([[2.0, 1.0], [-1.0, 3.0]])  # a different basis of the same plane
    np.testing.assert_allclose(geo.principal_angles(a, b @ mix), [0.0, theta], rtol=1e-12, atol=1e-16)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(3, 40), p=st.integers(1, 5), q=st.integers(1, 5))
def test_invariant_to_basis_and_symmetric(seed, d, p, q):
    p, q = min(p, d), min(q, d)
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((d, p)), rng.standard_normal((d, q))
    change = rng.standard_normal((p, p)) + 3 * np.eye(p)  # well-conditioned change of basis
    theta = geo.principal_angles(a, b)
    np.testing.assert_allclose(geo.principal_angles(a @ change, b), theta, atol=1e-10)
    np.testing.assert_allclose(geo.principal_angles(b, a), theta, atol=1e-12)
    assert np.all(np.diff(theta) >= -1e-15) and np.all((theta >= 0) & (theta <= math.pi / 2))


def test_overlap_measures_by_hand():
    a = np.eye(4)[:, :2]
    b = np.eye(4)[:, 1:3]  # shares e2, orthogonal otherwise: angles (0, pi/2)
    assert geo.mean_cos2(a, b) == pytest.approx(0.5)
    assert geo.projection_distance(a, b) == pytest.approx(1.0)
    assert geo.grassmann_distance(a, b) == pytest.approx(math.pi / 2)
    # projection distance = ||P_A - P_B||_F / sqrt(2) for equal dimensions
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((9, 3)), rng.standard_normal((9, 3))
    qa, qb = np.linalg.qr(x)[0], np.linalg.qr(y)[0]
    frob = np.linalg.norm(qa @ qa.T - qb @ qb.T) / math.sqrt(2)
    assert geo.projection_distance(x, y) == pytest.approx(frob, rel=1e-12)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: geo.principal_angles(x, y), (a, b))


def test_random_overlap_hand_derived_r_s_one():
    # r = s = 1: cos^2 ~ Beta(1/2, (d-1)/2), variance 2 (d-1) / (d^2 (d+2)).
    d = 17
    assert geo.random_overlap_mean(1, 1, d) == pytest.approx(1 / d)
    assert geo.random_overlap_var(1, 1, d) == pytest.approx(stats.beta(0.5, (d - 1) / 2).var(), rel=1e-12)
    assert geo.random_overlap_var(1, 1, d) == pytest.approx(2 * (d - 1) / (d**2 * (d + 2)), rel=1e-14)


@pytest.mark.parametrize(("d", "r", "s"), [(30, 4, 9), (120, 10, 40)])
def test_random_overlap_mean_and_var_by_monte_carlo(d, r, s):
    n = 4000
    g = torch.Generator().manual_seed(d)
    rand = geo.random_subspace(d, r, g, batch=(n,))
    fixed = torch.eye(d, dtype=torch.float64)[:, :s]
    overlap = (fixed.T @ rand).square().sum((-2, -1)).numpy()  # tr(P_R P_S)
    mean, var = geo.random_overlap_mean(r, s, d), geo.random_overlap_var(r, s, d)
    assert abs(overlap.mean() - mean) < 4.5 * math.sqrt(var / n)
    # sample variance of n draws: relative s.e. about sqrt(2/n) (+ kurtosis); 15% is > 6 s.e.
    assert overlap.var() == pytest.approx(var, rel=0.15)


def test_wachter_law_normalised_and_arcsine_case():
    for alpha, beta in [(0.5, 0.5), (0.1, 0.25), (0.3, 0.9), (0.8, 0.7), (1.0, 0.2)]:
        _, hi = geo.wachter_support(alpha, beta)
        total = geo.wachter_cdf(hi, alpha, beta) + geo.wachter_atom(alpha, beta)
        assert total == pytest.approx(1.0, abs=1e-9)
    # alpha = beta = 1/2: arcsine law, cdf (2/pi) arcsin(sqrt(x)) (hand-derived from the density).
    x = np.array([0.01, 0.2, 0.5, 0.9])
    np.testing.assert_allclose(geo.wachter_cdf(x, 0.5, 0.5), 2 / np.pi * np.arcsin(np.sqrt(x)), rtol=1e-8)
    assert geo.wachter_atom(0.7, 0.6) == pytest.approx(0.3 / 0.6)


def test_random_angles_follow_wachter_and_planted_structure_does_not():
    d, r, s, n = 400, 40, 100, 60
    g = torch.Generator().manual_seed(11)
    fixed = torch.eye(d, dtype=torch.float64)[:, :s]
    cos2 = torch.cos(geo.principal_angles(geo.random_subspace(d, r, g, batch=(n,)), fixed)).square()
    null_p = stats.kstest(cos2.flatten().numpy(), lambda v: geo.wachter_cdf(v, r / d, s / d)).pvalue
    assert null_p > 1e-3
    # plant: half of each random subspace inside the fixed one -> law rejected decisively
    planted = geo.random_subspace(d, r, g, batch=(n,)).clone()
    planted[..., : r // 2] = geo.random_subspace(s, r // 2, g, batch=(n,)).new_zeros(n, d, r // 2)
    planted[..., :s, : r // 2] = geo.random_subspace(s, r // 2, g, batch=(n,))
    cos2_planted = torch.cos(geo.principal_angles(planted, fixed)).square()
    assert stats.kstest(cos2_planted.flatten().numpy(), lambda v: geo.wachter_cdf(v, r / d, s / d)).pvalue < 1e-12


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: geo.principal_angles(np.ones(3), np.ones((3, 1))), ValueError, r"shape \(\.\.\., d, p\)"),
        (lambda: geo.principal_angles(np.ones((3, 1)), np.ones((4, 1))), ValueError, "same R\\^d"),
        (lambda: geo.principal_angles(np.ones((3, 2)), np.eye(3)[:, :1]), ValueError, "linearly dependent"),
        (lambda: geo.principal_angles(np.ones((2, 3)), np.eye(2)), ValueError, "1 <= p <= d"),
        (lambda: geo.principal_angles(np.full((3, 1), np.nan), np.eye(3)), ValueError, "NaN"),
        (lambda: geo.principal_angles([[1.0]], np.eye(1)), TypeError, "numpy array"),
        (lambda: geo.random_overlap_mean(5, 2, 4), ValueError, "must not exceed d"),
        (lambda: geo.wachter_pdf(0.5, 0.0, 0.5), ValueError, "alpha=0.0"),
        (lambda: geo.random_subspace(3, 4), ValueError, "r=4"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
