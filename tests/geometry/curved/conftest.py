"""mpmath references at 200 bits, independent of the code under test.

Each takes the float inputs exactly (every float is a dyadic rational, so mpmath holds it
without rounding) and uses a *different* formula from the implementation:
arcosh instead of asinh for the ball, arcosh of the Minkowski product for the hyperboloid,
arccos for the sphere. At 200 bits these forms are well conditioned enough.
"""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import pytest
import torch

BITS = 200


def _mp_vec(x) -> list:
    return [mp.mpf(float(v)) for v in torch.as_tensor(x).double().flatten().tolist()]


def mp_ball_dist(x, y, c: float = 1.0) -> mp.mpf:
    """arcosh(1 + 2c‖x−y‖²/((1−c‖x‖²)(1−c‖y‖²)))/√c, from the exact float inputs."""
    with mp.workprec(BITS):
        a, b, cc = _mp_vec(x), _mp_vec(y), mp.mpf(c)
        d2 = sum((p - q) ** 2 for p, q in zip(a, b, strict=True))
        ga = 1 - cc * sum(p * p for p in a)
        gb = 1 - cc * sum(q * q for q in b)
        return mp.acosh(1 + 2 * cc * d2 / (ga * gb)) / mp.sqrt(cc)


def mp_gap(x, c: float = 1.0) -> mp.mpf:
    with mp.workprec(BITS):
        return 1 - mp.mpf(c) * sum(p * p for p in _mp_vec(x))


def mp_lorentz_dist(x, y, c: float = 1.0) -> mp.mpf:
    """arcosh(−c⟨x,y⟩_L)/√c for points given on the sheet (spatial parts exact, time lifted at 200 bits)."""
    with mp.workprec(BITS):
        a, b, cc = _mp_vec(x), _mp_vec(y), mp.mpf(c)
        a0 = mp.sqrt(1 / cc + sum(p * p for p in a[1:]))
        b0 = mp.sqrt(1 / cc + sum(q * q for q in b[1:]))
        inner = -a0 * b0 + sum(p * q for p, q in zip(a[1:], b[1:], strict=True))
        return mp.acosh(-cc * inner) / mp.sqrt(cc)


def mp_sphere_dist(x, y, c: float = 1.0) -> mp.mpf:
    """arccos(⟨x̂, ŷ⟩)/√c of the exact inputs, normalised at 200 bits."""
    with mp.workprec(BITS):
        a, b = _mp_vec(x), _mp_vec(y)
        na, nb = mp.sqrt(sum(p * p for p in a)), mp.sqrt(sum(q * q for q in b))
        cos = sum(p * q for p, q in zip(a, b, strict=True)) / (na * nb)
        return mp.acos(max(min(cos, 1), -1)) / mp.sqrt(mp.mpf(c))


def rel_err(got: float, ref: mp.mpf) -> float:
    ref = float(ref)
    return abs(got - ref) / abs(ref) if ref != 0 else abs(got)


def ball_points(rng, n: int, dim: int, *, log10_gap: tuple[float, float], c: float = 1.0,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Points with 1 − √c‖x‖ log-uniform in 10^[lo, hi] (near 0 for gaps near 1, near the edge for tiny gaps)."""
    direction = rng.standard_normal((n, dim))
    direction /= (direction**2).sum(1, keepdims=True) ** 0.5
    gap = 10.0 ** rng.uniform(*log10_gap, size=(n, 1))
    return torch.tensor(direction * (1.0 - gap) / math.sqrt(c), dtype=dtype)


@pytest.fixture(scope="session")
def mpref():
    return {"ball": mp_ball_dist, "gap": mp_gap, "lorentz": mp_lorentz_dist, "sphere": mp_sphere_dist,
            "rel_err": rel_err, "ball_points": ball_points}


@pytest.fixture(scope="session")
def geoopt():
    """geoopt (the dev oracle), imported with its torch.jit.script deprecation warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("geoopt")
