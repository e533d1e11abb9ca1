"""Ball shells and the Gaussian annulus against exact arithmetic, mpmath and scipy."""

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from moescope import geometry as geo


@pytest.mark.parametrize(("eps", "d"), [(1e-12, 10), (1e-6, 3), (0.01, 100), (0.5, 2), (0.999, 10**9)])
def test_shell_mass_matches_mpmath(eps, d):
    with mp.workdps(50):
        ref = 1 - (1 - mp.mpf(eps)) ** d
    assert geo.shell_mass(eps, d) == pytest.approx(float(ref), rel=1e-14)


def test_shell_mass_where_the_naive_formula_fails():
    naive = 1 - (1 - 1e-12) ** 10  # loses almost every digit
    assert abs(naive - 1e-11) / 1e-11 > 1e-6
    assert geo.shell_mass(1e-12, 10) == pytest.approx(1e-11 - 45e-24, rel=1e-14)


@given(st.floats(0, 1), st.floats(0, 1), st.integers(1, 10**6))
def test_shell_monotone(e1, e2, d):
    lo, hi = sorted((e1, e2))
    assert geo.shell_mass(lo, d) <= geo.shell_mass(hi, d)


@pytest.mark.parametrize("d", [1, 2, 10, 1000, 10**7])
def test_gaussian_norm_mean_matches_mpmath(d):
    with mp.workdps(40):
        ref = mp.sqrt(2) * mp.gamma(mp.mpf(d + 1) / 2) / mp.gamma(mp.mpf(d) / 2)
    assert geo.gaussian_norm_mean(d) == pytest.approx(float(ref), rel=1e-14)


@pytest.mark.parametrize("d", [1, 3, 50, 5000])
def test_annulus_against_scipy_chi(d):
    law = stats.chi(d)
    for w in (0.1, 1.0, 3.0):
        lo, hi = max(np.sqrt(d) - w, 0), np.sqrt(d) + w
        assert geo.gaussian_annulus_mass(w, d) == pytest.approx(law.cdf(hi) - law.cdf(lo), rel=1e-10)
    assert geo.gaussian_norm_cdf(2.0, d) == pytest.approx(law.cdf(2.0), rel=1e-12)


def test_annulus_width_constant_in_d():
    # ||g|| - sqrt(d) -> N(0, 1/2): P(|.| <= 1) = P(|Z| <= sqrt(2)) -> erf(1) = 0.8427
    from math import erf

    assert geo.gaussian_annulus_mass(1.0, 10**7) == pytest.approx(erf(1.0), abs=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="eps=1.5"):
        geo.shell_mass(1.5, 3)
    with pytest.raises(ValueError, match="width=-1"):
        geo.gaussian_annulus_mass(-1.0, 3)
    with pytest.raises(ValueError, match="d=0"):
        geo.gaussian_norm_mean(0)
