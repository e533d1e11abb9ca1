"""Log-space regularised incomplete beta for the laws of a sphere coordinate.

For x uniform on S^{d-1}, the squared coordinate s = x_1^2 follows Beta(1/2, a) with
a = (d-1)/2, so every law in :mod:`moescope.geometry.sphere` is one value of

    I_s(1/2, a)        (lower, the "band")  or   I_{1-s}(a, 1/2)   (upper, the "caps").

Why not ``scipy.special.betainc`` alone: for large ``a`` (d up to 1e7 and beyond) two
things lose digits there, both checked against mpmath:

* the argument 1 - t^2 is rounded before scipy sees it, and the result's sensitivity
  to that argument grows like ``a`` (5e-10 relative error at d = 1e7);
* ``scipy.special.betaln(1/2, a)`` subtracts two large ``gammaln`` values for
  1e3 <= a <= 1e5 (3e-11 absolute error).

So this module works from t itself, in log space: log(1 - t^2) from an exact square of t,
log B(1/2, a) from the asymptotic series of log Gamma(z + 1/2) - log Gamma(z) (DLMF 5.11.8),
and then one of three evaluations, each where it is well conditioned:

* the lower mass I_s(1/2, a) by its continued fraction (Numerical Recipes 6.4, modified
  Lentz) for s < 1.5/(a + 2.5), where that fraction converges fast;
* the upper mass I_{1-s}(a, 1/2) by the same continued fraction when a < 15 or 1 - s is
  small (there 1 - s is not close to 1, so nothing cancels);
* otherwise by the large-``a`` expansion of DiDonato & Morris (1992, sec. 9; the BGRAT
  method of TOMS 708): with T = a + (b-1)/2 and lambda = -log x,
  I_x(a, b) = 1/B(a, b) * sum_n p_n T^{-(b+2n)} Gamma(b + 2n, T lambda), where the p_n are
  the power-series coefficients of (sinh(w/2)/(w/2))^{b-1} in w. It needs only lambda,
  which is exact, whereas the continued fraction's terms 1 - x r cancel to O(1/a).

Tails far below the smallest double (1e-300 and beyond) come back as finite logarithms.
"""

from __future__ import annotations

import numpy as np
from scipy import special

# Bernoulli numbers B_k for even k (DLMF 24.2); the series below needs k <= 16.
_BERNOULLI = ((2, 1 / 6), (4, -1 / 30), (6, 1 / 42), (8, -1 / 30), (10, 5 / 66),
              (12, -691 / 2730), (14, 7 / 6), (16, -3617 / 510))
# Below this z the direct gammaln difference is exact to ~3e-15 (values <= ~15); above it the
# series, truncated after B_16, errs by < 1e-17 (next term ~ B_18 / (306 z^17)).
_SERIES_FROM = 8.0
_TINY = 1e-300
# The large-a expansion: used for a >= 15 (DiDonato & Morris's own bound) while
# lambda = -log(1 - s) <= 1; its series in w has radius 2 pi, so it converges there
# geometrically, by a factor (lambda / 2 pi)^2 <= 0.026 per term.
_EXPANSION_MIN_A = 15.0
_EXPANSION_MAX_LAMBDA = 1.0
_EXPANSION_TERMS = 30
_CF_TOL = 4e-16
_CF_MAX_ITER = 200_000


def log_gamma_ratio_half(z: np.ndarray | float) -> np.ndarray:
    r"""log Γ(z + 1/2) − log Γ(z) for z > 0, to ~1e-15 absolute for every z.

    For z >= 8 uses DLMF 5.11.8 with h = 1/2:
    :math:`\tfrac12\log z - \sum_{k\,\mathrm{even}} (2 - 2^{1-k}) B_k / (k(k-1) z^{k-1})`,
    whose first terms are ``-1/(8z) + 1/(192 z^3)``.
    """
    z = np.asarray(z, dtype=np.float64)
    small = z < _SERIES_FROM
    zs = np.where(small, z, 1.0)
    direct = special.gammaln(zs + 0.5) - special.gammaln(zs)
    zl = np.where(small, _SERIES_FROM, z)
    series = 0.5 * np.log(zl)
    for k, b_k in _BERNOULLI:
        series = series - (2.0 - 2.0 ** (1 - k)) * b_k / (k * (k - 1) * zl ** (k - 1))
    return np.where(small, direct, series)


def log_beta_half(a: np.ndarray | float) -> np.ndarray:
    """log B(1/2, a) = log Γ(1/2) + log Γ(a) − log Γ(a + 1/2), accurate for all a > 0."""
    return 0.5 * np.log(np.pi) - log_gamma_ratio_half(a)


def exact_square(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """t^2 as an unevaluated sum hi + lo, exactly unless its low part is subnormal (|t| < 1e-145).

    Dekker's product with Veltkamp's split (Dekker 1971).
    """
    t = np.asarray(t, dtype=np.float64)
    hi = t * t
    c = 134217729.0 * t  # 2^27 + 1
    th = c - (c - t)
    tl = t - th
    lo = ((th * th - hi) + 2.0 * th * tl) + tl * tl
    return hi, lo


def log1m_square(t: np.ndarray) -> np.ndarray:
    """log(1 − t^2) for |t| <= 1 without rounding t^2 first (−inf at |t| = 1)."""
    hi, lo = exact_square(t)
    one_minus_hi = 1.0 - hi  # exact when hi >= 1/2 (Sterbenz); relative error eps otherwise
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log1p(-hi) + np.log1p(-lo / one_minus_hi)
    return np.where(one_minus_hi == 0.0, -np.inf, out)


def _continued_fraction(p: np.ndarray, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The continued fraction of I_x(p, q) (Numerical Recipes eq. 6.4.5), modified Lentz.

    Converges quickly for x < (p + 1)/(p + q + 2); all arrays broadcast together.
    """
    p, q, x = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (p, q, x)))
    qab, qap, qam = p + q, p + 1.0, p - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    active = np.ones(x.shape, dtype=bool)
    for m in range(1, _CF_MAX_ITER):
        m2 = 2.0 * m
        for aa in (m * (q - m) * x / ((qam + m2) * (p + m2)),
                   -(p + m) * (qab + m) * x / ((p + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < _TINY, _TINY, c)
            delta = np.where(active, d * c, 1.0)
            h = h * delta
        active &= np.abs(delta - 1.0) > _CF_TOL
        if not active.any():
            return h
    raise RuntimeError(f"incomplete-beta continued fraction did not converge in {_CF_MAX_ITER} steps")


def _expansion_coefficients(b: float, n_terms: int) -> np.ndarray:
    r"""Coefficients p_n of (\sinh(w/2)/(w/2))^{b-1} = \sum_n p_n w^{2n}.

    log(sinh(w/2)/(w/2)) = sum_k B_{2k} w^{2k} / (2k (2k)!); the exponential of a power
    series g with g_0 = 0 follows p_n = (1/n) sum_k k g_k p_{n-k}.
    """
    k = np.arange(1, n_terms)
    b2k = special.bernoulli(2 * n_terms)[2 * k]
    g = np.concatenate([[0.0], (b - 1.0) * b2k / (2 * k * special.factorial(2 * k))])
    p = np.zeros(n_terms)
    p[0] = 1.0
    for n in range(1, n_terms):
        p[n] = np.dot(k[:n] * g[1 : n + 1], p[n - 1 :: -1][:n]) / n
    return p


_P_HALF = _expansion_coefficients(0.5, _EXPANSION_TERMS)


def _log_upper_expansion(a: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """log I_x(a, 1/2) for large a from lambda = -log x > 0 (DiDonato & Morris 1992, sec. 9).

    With T = a - 1/4 and u = T lambda, I_x(a, 1/2) = e^{-u} u^{1/2} T^{-1/2} / B(a, 1/2)
    * sum_n p_n H_n, where H_n = Gamma(1/2 + 2n, u) e^u u^{-1/2} / T^{2n} follows from
    H_0 = sqrt(pi) erfcx(sqrt(u)) / sqrt(u) by the upward recurrence
    Gamma(c + 2, u) = (c + 1) c Gamma(c, u) + (c + 1 + u) u^c e^{-u}, whose terms are all
    positive (stable).
    """
    t_big = a - 0.25
    u = t_big * lam
    root_u = np.sqrt(u)
    h = np.sqrt(np.pi) * special.erfcx(root_u) / root_u
    total = _P_HALF[0] * h
    lam_pow = np.ones_like(lam)  # lambda^{2n}
    inv_t2 = 1.0 / (t_big * t_big)
    for n in range(1, _EXPANSION_TERMS):
        c = 0.5 + 2.0 * (n - 1)
        h = ((c + 1.0) * c * h + (c + 1.0 + u) * lam_pow) * inv_t2
        lam_pow = lam_pow * lam * lam
        total = total + _P_HALF[n] * h
    return -u + 0.5 * np.log(u) - 0.5 * np.log(t_big) - log_beta_half(a) + np.log(total)


def log_sphere_tails(t: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logs of the two complementary masses of s = t^2 under Beta(1/2, a).

    Args:
        t: |t| <= 1, any shape.
        a: (d - 1)/2 > 0, broadcastable with t.

    Returns:
        (log P(s <= t^2), log P(s >= t^2)), i.e. log band mass and log of twice the cap
        mass, each accurate to ~1e-13 absolute (relative for the mass) for every d.
    """
    t = np.abs(np.asarray(t, dtype=np.float64))
    a = np.asarray(a, dtype=np.float64)
    t, a = np.broadcast_arrays(t, a)
    s = t * t
    log_s = 2.0 * np.log(np.where(t > 0, t, 1.0))
    log_1ms = log1m_square(t)
    log_b = log_beta_half(a)
    # Lower form I_s(1/2, a) converges for s < 1.5/(a + 2.5); the upper form I_{1-s}(a, 1/2)
    # converges for 1 - s < (a + 1)/(a + 2.5): the same boundary seen from both sides.
    lower = s < 1.5 / (a + 2.5)
    half = np.full_like(a, 0.5)
    cf_low = _continued_fraction(half, a, np.where(lower, s, 0.0))
    lam = -log_1ms
    expand = ~lower & (a >= _EXPANSION_MIN_A) & (lam <= _EXPANSION_MAX_LAMBDA)
    cf_up = _continued_fraction(a, half, np.where(lower | expand, 0.5, 1.0 - s))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_low = 0.5 * log_s + a * log_1ms - np.log(0.5) - log_b + np.log(cf_low)
        log_up = a * log_1ms + 0.5 * log_s - np.log(a) - log_b + np.log(cf_up)
        log_exp = _log_upper_expansion(np.where(expand, a, 100.0), np.where(expand, lam, 0.5))
        log_up = np.where(expand, log_exp, log_up)
        log_small = np.where(lower, log_low, log_up)          # the mass computed directly
        log_other = np.log(-np.expm1(np.minimum(log_small, 0.0)))  # 1 - exp(log_small)
    log_band = np.where(lower, log_small, log_other)
    log_caps = np.where(lower, log_other, log_small)
    log_band = np.where(t == 0, -np.inf, log_band)
    log_caps = np.where(t == 0, 0.0, log_caps)
    log_caps = np.where(t >= 1.0, -np.inf, log_caps)
    log_band = np.where(t >= 1.0, 0.0, log_band)
    return log_band, log_caps
