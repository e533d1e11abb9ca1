"""The sphere of curvature +c: the half-angle distance against mpmath, geoopt, identities, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moescope.geometry.curved import Sphere, spherical

F64 = torch.float64


def _on_sphere(rng, n, dim, c):
    return spherical.project(torch.tensor(rng.standard_normal((n, dim + 1)), dtype=F64), c=c)


@pytest.mark.parametrize("angle", [1e-14, 1e-8, 0.5, math.pi - 1e-6, math.pi - 1e-12])
def test_distance_exact_for_near_and_antipodal_points(mpref, angle):
    """atan2(‖x−y‖, ‖x+y‖) keeps every digit at both ends, where arccos⟨x, y⟩ loses half of them."""
    x = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    y = torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=F64)
    ref = mpref["sphere"](x, y)
    assert mpref["rel_err"](spherical.dist(x, y).item(), ref) < 8 * 2.0**-53
    if angle == 1e-8:
        arccos = torch.acos((x * y).sum()).item()
        assert mpref["rel_err"](arccos, ref) > 1e-9


@pytest.mark.parametrize("c", [0.25, 1.0, 4.0])
def test_curvature_scales_distance(mpref, c):
    rng = np.random.default_rng(0)
    x, y = _on_sphere(rng, 10, 2, c), _on_sphere(rng, 10, 2, c)
    d = spherical.dist(x, y, c=c)
    for i in range(10):
        assert mpref["rel_err"](d[i].item(), mpref["sphere"](x[i], y[i], c)) < 1e-14
    assert d.max().item() <= math.pi / math.sqrt(c) * (1 + 1e-15)       # the diameter is π/√c


def test_matches_geoopt(geoopt):
    s = geoopt.Sphere()
    rng = np.random.default_rng(1)
    x, y = _on_sphere(rng, 20, 3, 1.0), _on_sphere(rng, 20, 3, 1.0)
    u = spherical.proju(x, torch.tensor(rng.standard_normal((20, 4)), dtype=F64))
    close = {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(spherical.dist(x, y), s.dist(x, y), **close)
    torch.testing.assert_close(spherical.expmap(x, u), s.expmap(x, u), **close)
    torch.testing.assert_close(spherical.logmap(x, y), s.logmap(x, y), **close)
    torch.testing.assert_close(spherical.proju(x, y), s.proju(x, y), **close)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.sampled_from([0.3, 1.0, 3.0]), dim=st.integers(1, 5))
def test_identities(seed, c, dim):
    rng = np.random.default_rng(seed)
    x, y, z = (_on_sphere(rng, 8, dim, c) for _ in range(3))
    dxy = spherical.dist(x, y, c=c)
    assert torch.equal(dxy, spherical.dist(y, x, c=c))
    assert bool((spherical.dist(x, x, c=c) == 0).all())
    assert bool((spherical.dist(x, z, c=c) <= dxy + spherical.dist(y, z, c=c) + 1e-12).all())
    back = spherical.expmap(x, spherical.logmap(x, y, c=c), c=c)
    far = math.pi / math.sqrt(c) - dxy                                 # distance to the cut locus
    assert bool((spherical.dist(back, y, c=c) <= 1e-13 / far.clamp_min(1e-3)).all())
    v = spherical.proju(x, torch.tensor(rng.standard_normal(x.shape), dtype=F64), c=c)
    pv = spherical.transp(x, y, v, c=c)
    torch.testing.assert_close((y * pv).sum(-1), torch.zeros(8, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(pv.norm(dim=-1), v.norm(dim=-1), rtol=1e-9, atol=0)


def test_antipode_log_is_zero_not_nan():
    x = torch.tensor([1.0, 0.0], dtype=F64)
    assert torch.equal(spherical.logmap(x, -x), torch.zeros(2, dtype=F64))


def test_bad_input_is_refused_clearly():
    x = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    with pytest.raises(ValueError, match=r"lie on the sphere ‖x‖ = 1/√c; got a point with √c‖x‖ = 2"):
        spherical.dist(2 * x, x)
    with pytest.raises(ValueError, match=r"curvature \+c\) and must be a positive finite number; got c=-1.0"):
        Sphere(-1.0)
    with pytest.raises(ValueError, match="got c=0"):
        spherical.dist(x, x, c=0)
    with pytest.raises(ValueError, match="no direction"):
        spherical.project(torch.zeros(3, dtype=F64))
