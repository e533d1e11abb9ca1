"""mpmath references for the sphere laws, independent of the code under test.

Body of the law: mpmath's own incomplete beta of the *lower* form I_{t^2}(1/2, a) (its
hypergeometric series converges fast for t^2 a small), at 60 digits so that taking the
complement cancels nothing. Tails: direct quadrature of the density
(1 - s^2)^(a - 1) / B(1/2, a) from t to 1, with breakpoints on the decay scale.
"""

from __future__ import annotations

import mpmath as mp
import pytest


def mp_two_caps(t: float, d: int) -> mp.mpf:
    """P(|x_1| >= t) for x uniform on S^{d-1}, to ~30 significant digits."""
    with mp.workdps(60):
        t = mp.mpf(t)
        a = mp.mpf(d - 1) / 2
        if t * t * a < 8:
            return 1 - mp.betainc(mp.mpf(1) / 2, a, 0, t * t, regularized=True)
        expo = a - 1
        base = expo * mp.log(1 - t * t)
        width = (1 - t * t) / max((d - 3) * t, 1)
        points, k = [t], mp.mpf(1) / 8
        while t + k * width < 1 and k < 1e9:
            points.append(t + k * width)
            k *= 4
        points.append(mp.mpf(1))
        integral = mp.quad(lambda s: mp.exp(expo * mp.log(1 - s * s) - base), points)
        return 2 * mp.exp(base) * integral / mp.beta(mp.mpf(1) / 2, a)


@pytest.fixture(scope="session")
def two_caps_ref():
    return mp_two_caps
