"""The numerical kernels under the sphere laws, against mpmath and exact arithmetic."""

from fractions import Fraction

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moescope.geometry._betainc import exact_square, log1m_square, log_beta_half, log_gamma_ratio_half


@pytest.mark.parametrize("z", [0.5, 1.0, 2.5, 7.99, 8.0, 29.99, 30.0, 100.5, 1e3, 5e4 + 0.5, 5e6, 1e12])
def test_log_gamma_ratio_half_matches_mpmath(z):
    with mp.workdps(40):
        ref = mp.loggamma(mp.mpf(z) + 0.5) - mp.loggamma(mp.mpf(z))
    assert abs(float(log_gamma_ratio_half(z)) - float(ref)) <= 4e-15 * max(1.0, abs(float(ref)))


def test_log_beta_half_beats_scipy_where_scipy_cancels():
    # scipy.special.betaln(0.5, 5e4) is off by ~3e-11; ours must be at rounding level.
    with mp.workdps(40):
        ref = float(mp.log(mp.beta(0.5, mp.mpf(50_000))))
    assert abs(float(log_beta_half(50_000.0)) - ref) < 1e-14


@given(st.floats(min_value=-1.0, max_value=1.0, allow_nan=False))
def test_exact_square_is_exact(t):
    if 0 < abs(t) < 1e-145:  # the low part of t^2 is subnormal: no two doubles hold it
        t = 0.0
    hi, lo = exact_square(np.float64(t))
    assert Fraction(float(hi)) + Fraction(float(lo)) == Fraction(t) ** 2


@pytest.mark.parametrize("t", [0.0, 1e-8, 3e-4, 0.1, 0.5, 0.7071067811865476, 0.9, 1 - 1e-12])
def test_log1m_square_matches_mpmath(t):
    with mp.workdps(40):
        ref = mp.log(1 - mp.mpf(t) ** 2)
    got = float(log1m_square(np.float64(t)))
    assert got == pytest.approx(float(ref), rel=2e-16, abs=1e-300)
