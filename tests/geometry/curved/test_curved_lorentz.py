"""The hyperboloid: conversion with the ball, mpmath and geoopt oracles, identities, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moescope.geometry.curved import Lorentz, lorentz, poincare

F64 = torch.float64


def _points(rng, n, dim, c, mpref, lo=-6):
    return lorentz.from_poincare(mpref["ball_points"](rng, n, dim, log10_gap=(lo, -0.01), c=c), c=c)


@pytest.mark.parametrize("c", [0.4, 1.0, 2.5])
def test_conversion_round_trip_and_isometry(mpref, c):
    rng = np.random.default_rng(0)
    p = mpref["ball_points"](rng, 30, 3, log10_gap=(-8, -0.01), c=c)
    q = mpref["ball_points"](rng, 30, 3, log10_gap=(-3, -0.01), c=c)
    x, y = lorentz.from_poincare(p, c=c), lorentz.from_poincare(q, c=c)
    lorentz.check_on_hyperboloid(x, c)                                 # on the sheet to rounding
    assert bool((poincare.dist(lorentz.to_poincare(x, c=c), p, c=c) <= 1e-13 * 2 / poincare.gap(p, c).squeeze(-1)
                 ).all())
    far = poincare.gap(p, c).squeeze(-1) > 1e-3                        # where the hyperboloid is well conditioned
    torch.testing.assert_close(lorentz.dist(x, y, c=c)[far], poincare.dist(p, q, c=c)[far], rtol=1e-10, atol=1e-12)


def test_distance_of_nearly_equal_points_against_mpmath(mpref):
    """The chord form keeps digits that arcosh(−c⟨x, y⟩) drops."""
    xs = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    for delta in (1e-5, 1e-9, 1e-13):
        ys = xs + delta * torch.tensor([1.0, 0.5, -0.25], dtype=F64)
        x = lorentz.project(torch.cat([torch.ones(1, dtype=F64), xs]))
        y = lorentz.project(torch.cat([torch.ones(1, dtype=F64), ys]))
        ref = mpref["lorentz"](x, y)
        assert mpref["rel_err"](lorentz.dist(x, y).item(), ref) < 1e-12
        arcosh = torch.acosh(-lorentz.minkowski_inner(x, y)).item()
        if delta <= 1e-9:
            assert arcosh == 0.0 or mpref["rel_err"](arcosh, ref) > 1e-3


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_matches_geoopt(mpref, geoopt, c):
    lm = geoopt.manifolds.lorentz.math
    k = torch.tensor(1.0 / c, dtype=F64)                                 # geoopt's k is 1/c
    rng = np.random.default_rng(3)
    x, y = _points(rng, 20, 3, c, mpref, lo=-2), _points(rng, 20, 3, c, mpref, lo=-2)
    u = lorentz.proju(x, torch.tensor(rng.standard_normal((20, 4)) * 0.5, dtype=F64), c=c)
    close = {"rtol": 1e-7, "atol": 1e-8}
    torch.testing.assert_close(lorentz.dist(x, y, c=c), lm.dist(x, y, k=k), **close)
    torch.testing.assert_close(lorentz.expmap(x, u, c=c), lm.expmap(x, u, k=k), **close)
    torch.testing.assert_close(lorentz.logmap(x, y, c=c), lm.logmap(x, y, k=k), **close)
    torch.testing.assert_close(lorentz.project(x + 0.01, c=c), lm.project(x + 0.01, k=k), **close)
    torch.testing.assert_close(lorentz.transp(x, y, u, c=c), lm.parallel_transport(x, y, u, k=k), **close)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.sampled_from([0.3, 1.0, 3.0]))
def test_identities(mpref, seed, c):
    """Within ~5 units of the origin (x₀ ≲ 60): farther out the hyperboloid's coordinates grow like e^ρ
    and every identity loses digits in proportion, which is why the ball is the model for the edge."""
    rng = np.random.default_rng(seed)
    x, y, z = (_points(rng, 8, 2, c, mpref, lo=-1.5) for _ in range(3))
    dxy = lorentz.dist(x, y, c=c)
    torch.testing.assert_close(dxy, lorentz.dist(y, x, c=c), rtol=1e-12, atol=1e-12)
    assert bool((lorentz.dist(x, x, c=c) == 0).all())
    assert bool((lorentz.dist(x, z, c=c) <= dxy + lorentz.dist(y, z, c=c) + 1e-9).all())
    back = lorentz.expmap(x, lorentz.logmap(x, y, c=c), c=c)
    growth = x[..., 0] * y[..., 0] * c * (c**0.5 * dxy).exp()        # coordinate size × Jacobi-field growth
    assert bool((lorentz.dist(back, y, c=c) <= 1e-12 * growth).all())
    v = lorentz.proju(x, torch.tensor(rng.standard_normal((8, 3)), dtype=F64), c=c)
    pv = lorentz.transp(x, y, v, c=c)
    scale = y.norm(dim=-1) * pv.norm(dim=-1)                          # rounding in ⟨·,·⟩_L is relative to this
    assert bool((lorentz.minkowski_inner(y, pv).abs() <= 1e-12 * scale).all())
    assert bool(((lorentz.minkowski_inner(pv, pv) - lorentz.minkowski_inner(v, v)).abs() <= 1e-11 * scale**2).all())


def test_riemannian_gradient_is_tangent_and_steepest():
    """grad f = proju(J ∇f): tangent, and ⟨grad f, v⟩_L = ∇f · v for every tangent v."""
    g = torch.Generator().manual_seed(1)
    x = lorentz.project(torch.randn(5, 4, generator=g, dtype=F64))
    egrad = torch.randn(5, 4, generator=g, dtype=F64)
    v = lorentz.proju(x, torch.randn(5, 4, generator=g, dtype=F64))
    rg = lorentz.egrad2rgrad(x, egrad)
    torch.testing.assert_close(lorentz.minkowski_inner(x, rg), torch.zeros(5, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(lorentz.minkowski_inner(rg, v), (egrad * v).sum(-1), rtol=1e-10, atol=1e-12)


def test_bad_input_is_refused_clearly():
    x = lorentz.project(torch.tensor([0.0, 0.3, 0.4], dtype=F64))
    with pytest.raises(ValueError, match=r"upper sheet of the hyperboloid c⟨x,x⟩_L = −1, x₀ > 0; got a point"):
        lorentz.dist(torch.tensor([1.0, 0.3, 0.4], dtype=F64), x)
    with pytest.raises(ValueError, match="x₀ = -1"):
        lorentz.dist(-x, x)
    with pytest.raises(ValueError, match="n \\+ 1 >= 2 coordinates"):
        lorentz.dist(torch.ones(1, dtype=F64), torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="curvature −c"):
        Lorentz(0.0)
    with pytest.raises(ValueError, match="got c=-1.0"):
        lorentz.project(x, c=-1.0)
