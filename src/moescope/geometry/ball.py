r"""Where the volume of a ball and the mass of a Gaussian live in high dimension.

* Shell: the fraction of the unit ball B^d within eps of its surface is
  1 − (1 − eps)^d, computed as ``-expm1(d * log1p(-eps))`` so that it stays exact for
  eps = 1e-12 (where 1 − (1 − eps)^d loses every digit) and for d = 1e9.
* Gaussian annulus: for g ~ N(0, I_d), ||g|| follows the chi law with d degrees of freedom,
  P(||g|| <= r) = P(d/2, r²/2) (regularised lower incomplete gamma), and
  E||g|| = sqrt(2) Γ((d+1)/2) / Γ(d/2) -> sqrt(d); the mass sits in a shell of constant
  width around sqrt(d) (Vershynin 2018, Thm. 3.1.1).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from moescope.geometry._betainc import log_gamma_ratio_half
from moescope.geometry._check import as_dim, as_real, scalar_or_array

__all__ = ["gaussian_annulus_mass", "gaussian_norm_cdf", "gaussian_norm_mean", "shell_mass"]


def shell_mass(eps: object, d: object) -> float | np.ndarray:
    """Fraction of the unit ball's volume within eps of the surface: 1 − (1 − eps)^d."""
    eps = as_real(eps, name="eps", low=0.0, high=1.0)
    d = as_dim(d, minimum=1)
    with np.errstate(divide="ignore"):
        return scalar_or_array(-np.expm1(d * np.log1p(-eps)))


def gaussian_norm_cdf(r: object, d: object) -> float | np.ndarray:
    """P(||g|| <= r) for g ~ N(0, I_d): the chi(d) cdf, ``gammainc(d/2, r²/2)``."""
    r = as_real(r, name="r", low=0.0)
    d = as_dim(d, minimum=1)
    return scalar_or_array(special.gammainc(d / 2.0, r**2 / 2.0))


def gaussian_norm_mean(d: object) -> float | np.ndarray:
    """E||g|| = sqrt(2) Γ((d+1)/2)/Γ(d/2), from the stable log-gamma ratio (no overflow)."""
    d = as_dim(d, minimum=1)
    return scalar_or_array(np.sqrt(2.0) * np.exp(log_gamma_ratio_half(d / 2.0)))


def gaussian_annulus_mass(width: object, d: object) -> float | np.ndarray:
    """P(| ||g|| − sqrt(d) | <= width) for g ~ N(0, I_d).

    Taken as 1 − (lower tail + upper tail) when the mass is large and as a difference of
    cdfs when it is small, so neither form cancels.
    """
    width = as_real(width, name="width", low=0.0)
    d = as_dim(d, minimum=1)
    width, d = np.broadcast_arrays(width, d)
    root = np.sqrt(d)
    lo = np.maximum(root - width, 0.0)
    hi = root + width
    k = d / 2.0
    lower_tail = special.gammainc(k, lo**2 / 2.0)
    upper_tail = special.gammaincc(k, hi**2 / 2.0)
    by_tails = 1.0 - lower_tail - upper_tail
    by_difference = special.gammainc(k, hi**2 / 2.0) - lower_tail
    return scalar_or_array(np.where(by_tails > 0.5, by_tails, by_difference))
