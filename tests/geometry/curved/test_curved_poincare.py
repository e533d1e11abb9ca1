"""The Poincaré ball: mpmath at 200 bits, geoopt as an oracle, gyro identities, gradients, bad input."""

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moescope.geometry.curved import BALL_MARGIN, MAX_DIST0, PoincareBall, poincare
from moescope.geometry.curved._numerics import one_minus_cnorm2

F64 = torch.float64


def _t(*rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


# --- exactness: mpmath at 200 bits --------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 4, 8, 12, 15])            # 1 − ‖x‖ = 10^-k
@pytest.mark.parametrize("offset", [1e-300, 1e-17, 1e-9, 0.3])  # how far y is from x, relative to the gap
def test_distance_exact_near_boundary_and_nearly_equal(mpref, k, offset):
    """Near the edge and for nearly equal points: a few ulps of the 200-bit answer."""
    rng = np.random.default_rng(k)
    u = rng.standard_normal(3)
    u /= np.linalg.norm(u)
    x = torch.tensor(u * (1 - 10.0**-k), dtype=F64)
    step = torch.tensor(rng.standard_normal(3), dtype=F64) * offset * 10.0**-k
    y = x + step
    if bool(torch.equal(x, y)):
        y = torch.nextafter(x, torch.zeros_like(x))
    assert poincare.gap(y).item() > 0
    ref = mpref["ball"](x, y)
    got = poincare.dist(x, y).item()
    assert mpref["rel_err"](got, ref) < 64 * 2.0**-53, (got, float(ref))


def test_the_other_forms_lose_every_digit_where_ours_does_not(mpref, geoopt):
    gm = geoopt.manifolds.stereographic.math
    """arcosh(1 + …) returns 0 for nearby points; artanh‖−x⊕y‖ saturates near the edge."""
    x = _t(0.3, -0.2, 0.1)
    y = x + 1e-10
    ref = mpref["ball"](x, y)
    gx, gy = 1 - x.square().sum(), 1 - y.square().sum()
    arcosh_form = torch.acosh(1 + 2 * (x - y).square().sum() / (gx * gy)).item()
    assert arcosh_form == 0.0 or mpref["rel_err"](arcosh_form, ref) > 1e-3
    assert mpref["rel_err"](poincare.dist(x, y).item(), ref) < 1e-14

    e = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    x, y = (1 - 1e-15) * e, (1 - 2e-15) * e       # both within 2e-15 of the edge, ~0.69 apart
    ref = mpref["ball"](x, y)
    mobius_form = 2 * torch.atanh(gm.mobius_add(-x, y, k=torch.tensor(-1.0, dtype=F64)).norm()).item()
    assert mpref["rel_err"](mobius_form, ref) > 1e-3
    assert mpref["rel_err"](poincare.dist(x, y).item(), ref) < 1e-14


@pytest.mark.parametrize("c", [1.0, 0.37, 4.0])
def test_gap_is_exact_to_one_rounding(mpref, c):
    rng = np.random.default_rng(1)
    x = mpref["ball_points"](rng, 50, 4, log10_gap=(-15.5, 0), c=c)
    g = one_minus_cnorm2(x, c).squeeze(-1)
    for i in range(len(x)):
        assert mpref["rel_err"](g[i].item(), mpref["gap"](x[i], c)) < 4 * 2.0**-53


def test_float32_inputs_exact_against_mpmath(mpref):
    rng = np.random.default_rng(2)
    x = mpref["ball_points"](rng, 40, 2, log10_gap=(-6.5, 0), dtype=torch.float32)
    y = mpref["ball_points"](rng, 40, 2, log10_gap=(-6.5, 0), dtype=torch.float32)
    d = poincare.dist(x, y)
    assert d.dtype == torch.float32
    for i in range(len(x)):
        assert mpref["rel_err"](d[i].item(), mpref["ball"](x[i], y[i])) < 16 * 2.0**-24


# --- the edge of the representable ball ---------------------------------------------------------

@pytest.mark.parametrize(("dtype", "p", "expected"), [(torch.float32, 24, 17.3287), (torch.float64, 53, 37.4299)])
def test_largest_distance_from_origin(dtype, p, expected):
    """2·artanh(1 − 2^-p) = ln(2^(p+1) − 1): 17.33 in float32, 37.43 in float64."""
    edge = torch.tensor([1 - 2.0**-p, 0.0], dtype=dtype)
    assert float(edge[0]) < 1.0 and float(torch.nextafter(edge[0], torch.tensor(2.0, dtype=dtype))) == 1.0
    with mp.workprec(200):
        exact = float(2 * mp.atanh(1 - mp.mpf(2) ** -p))
    assert MAX_DIST0[dtype] == pytest.approx(exact, rel=1e-15)
    assert MAX_DIST0[dtype] == pytest.approx(expected, abs=5e-5)
    assert poincare.dist0(edge).item() == pytest.approx(exact, rel=4 * 2.0**-p)
    with pytest.raises(ValueError, match="strictly inside the Poincaré ball"):
        poincare.dist0(torch.tensor([1.0, 0.0], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1.0, 2.5])
def test_project_keeps_the_stated_margin(dtype, c):
    x = torch.tensor([[3.0, 4.0], [0.1, 0.2], [1.0, 0.0]], dtype=dtype)
    p = poincare.project(x, c=c)
    margin = BALL_MARGIN[dtype]
    assert torch.equal(p[1], x[1])                               # inside: untouched
    norms = p.double().norm(dim=-1) * math.sqrt(c)
    assert bool((norms <= (1 - margin) * (1 + 4 * 2.0**-24)).all())
    cap = math.log(2 / margin - 1) / math.sqrt(c)
    # a few roundings of the rescaled coordinates move 1 − √c‖x‖ by at most a quarter of the margin
    assert poincare.dist0(p, c=c).max().item() == pytest.approx(cap, abs=math.log(4 / 3) / math.sqrt(c))
    assert {torch.float32: 2.0**-20, torch.float64: 2.0**-49}[dtype] == margin


# --- geoopt as an independent oracle --------------------------------------------------------------

@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_matches_geoopt(c, mpref, geoopt):
    gm = geoopt.manifolds.stereographic.math
    rng = np.random.default_rng(int(c * 10))
    x = mpref["ball_points"](rng, 20, 3, log10_gap=(-3, -0.05), c=c)
    y = mpref["ball_points"](rng, 20, 3, log10_gap=(-3, -0.05), c=c)
    # tangent steps of Riemannian length O(1): geoopt clamps tanh at 15 and projects at 1 − 1e-5
    u = torch.tensor(rng.standard_normal((20, 3)), dtype=F64) * poincare.gap(x, c) / 2
    k = torch.tensor(-c, dtype=F64)
    close = {"rtol": 1e-9, "atol": 1e-9}
    torch.testing.assert_close(poincare.dist(x, y, c=c), gm.dist(x, y, k=k), **close)
    torch.testing.assert_close(poincare.dist0(x, c=c), gm.dist0(x, k=k), **close)
    torch.testing.assert_close(poincare.mobius_add(x, y, c=c), gm.mobius_add(x, y, k=k), **close)
    torch.testing.assert_close(poincare.expmap(x, u, c=c), gm.expmap(x, u, k=k), **close)
    torch.testing.assert_close(poincare.logmap(x, y, c=c), gm.logmap(x, y, k=k), **close)
    torch.testing.assert_close(poincare.expmap0(u, c=c), gm.expmap0(u, k=k), **close)
    torch.testing.assert_close(poincare.logmap0(y, c=c), gm.logmap0(y, k=k), **close)
    torch.testing.assert_close(poincare.gyration(x, y, u, c=c), gm.gyration(x, y, u, k=k), **close)
    torch.testing.assert_close(poincare.transp(x, y, u, c=c), gm.parallel_transport(x, y, u, k=k), **close)
    torch.testing.assert_close(poincare.egrad2rgrad(x, u, c=c), gm.egrad2rgrad(x, u, k=k), **close)


# --- identities over seeds, dtypes and log-uniform distances to the edge ------------------------

def _triple(seed: int, dtype: torch.dtype, c: float, mpref):
    rng = np.random.default_rng(seed)
    lo = -12 if dtype == F64 else -4.5
    return tuple(mpref["ball_points"](rng, 8, 3, log10_gap=(lo, -0.01), c=c, dtype=dtype) for _ in range(3))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([torch.float32, F64]),
       c=st.sampled_from([0.3, 1.0, 3.0]))
def test_metric_axioms(mpref, seed, dtype, c):
    x, y, z = _triple(seed, dtype, c, mpref)
    dxy = poincare.dist(x, y, c=c)
    assert torch.equal(dxy, poincare.dist(y, x, c=c))                   # symmetric, bit for bit
    assert bool((poincare.dist(x, x, c=c) == 0).all())                  # zero on the diagonal
    tol = 64 * torch.finfo(dtype).eps
    lhs, rhs = poincare.dist(x, z, c=c).double(), (dxy + poincare.dist(y, z, c=c)).double()
    assert bool((lhs <= rhs * (1 + tol) + tol).all())                   # triangle inequality


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([torch.float32, F64]),
       c=st.sampled_from([0.3, 1.0, 3.0]))
def test_exp_log_and_gyro_identities(mpref, seed, dtype, c):
    """exp∘log = id, log∘exp = id and the gyrogroup laws, to the precision the grid allows.

    Near the edge one ulp of a coordinate is eps·λ_y of intrinsic distance, and exp amplifies
    an error in its direction by up to e^L over a geodesic of length L (Jacobi fields grow
    like sinh). So the bound is C·eps·(λ_x + λ_y)·e^L, measured in the intrinsic metric.
    """
    rng = np.random.default_rng(seed)
    lo = -12 if dtype == F64 else -3
    x = mpref["ball_points"](rng, 8, 3, log10_gap=(lo, -0.01), c=c, dtype=dtype)
    direction = torch.tensor(rng.standard_normal((8, 3)), dtype=dtype)
    length = torch.tensor(10.0 ** rng.uniform(-6, 0.6, (8, 1)), dtype=dtype)   # Riemannian length up to 4
    lam_x = 2 / poincare.gap(x, c)
    v = length * direction / direction.norm(dim=-1, keepdim=True) / lam_x
    y = poincare.expmap(x, v, c=c)
    lam_y = 2 / poincare.gap(y, c)
    eps = torch.finfo(dtype).eps
    bound = (64 * eps * (lam_x + lam_y) * length.exp() / math.sqrt(c)).squeeze(-1)
    back = poincare.expmap(x, poincare.logmap(x, y, c=c), c=c)
    assert bool((poincare.dist(back, y, c=c) <= bound).all())
    err_v = (poincare.logmap(x, y, c=c) - v).norm(dim=-1) * lam_x.squeeze(-1)
    assert bool((err_v <= bound).all())
    # left cancellation (−x) ⊕ (x ⊕ y) = y and the gyrocommutative law x ⊕ y = gyr[x, y](y ⊕ x)
    w = mpref["ball_points"](rng, 8, 3, log10_gap=(lo, -0.01), c=c, dtype=dtype)
    xw = poincare.mobius_add(x, w, c=c)
    cancel = poincare.mobius_add(-x, xw, c=c)
    lam = lam_x + 2 / poincare.gap(w, c) + 2 / poincare.gap(xw, c)      # every point the computation visits
    assert bool((poincare.dist(cancel, w, c=c) <= (1e3 * eps * lam).squeeze(-1)).all())
    if dtype == F64:
        xy, yx = poincare.mobius_add(x, y, c=c), poincare.mobius_add(y, x, c=c)
        torch.testing.assert_close(xy, poincare.gyration(x, y, yx, c=c), rtol=1e-9, atol=1e-9)


def test_gyration_closed_form_equals_its_definition(mpref):
    rng = np.random.default_rng(5)
    u, v, w = (mpref["ball_points"](rng, 16, 4, log10_gap=(-2, -0.1), c=1.5) for _ in range(3))
    definition = poincare.mobius_add(-poincare.mobius_add(u, v, c=1.5),
                                     poincare.mobius_add(u, poincare.mobius_add(v, w, c=1.5), c=1.5), c=1.5)
    torch.testing.assert_close(poincare.gyration(u, v, w, c=1.5), definition, rtol=1e-10, atol=1e-12)


def test_transport_keeps_the_riemannian_norm(mpref):
    rng = np.random.default_rng(6)
    x, y = (mpref["ball_points"](rng, 16, 3, log10_gap=(-6, -0.1)) for _ in range(2))
    v = torch.tensor(rng.standard_normal((16, 3)), dtype=F64)
    pv = poincare.transp(x, y, v)
    torch.testing.assert_close(poincare.inner(y, pv, pv), poincare.inner(x, v, v), rtol=1e-10, atol=0)
    # log_x(y) transported to y is −log_y(x)
    torch.testing.assert_close(poincare.transp(x, y, poincare.logmap(x, y)), -poincare.logmap(y, x),
                               rtol=1e-8, atol=1e-12)


def test_broadcast_equals_loop():
    g = torch.Generator().manual_seed(0)
    x = poincare.expmap0(torch.randn(4, 1, 3, generator=g, dtype=F64))
    y = poincare.expmap0(torch.randn(1, 5, 3, generator=g, dtype=F64))
    d = poincare.dist(x, y)
    assert d.shape == (4, 5)
    for i in range(4):
        for j in range(5):
            assert d[i, j].item() == poincare.dist(x[i, 0], y[0, j]).item()


# --- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("log10_gap", [(-1e-9, -1e-10), (-3, -1), (-6, -5)])    # near 0, inside, near the edge
def test_gradcheck_float64(mpref, log10_gap):
    rng = np.random.default_rng(7)
    if log10_gap[0] > -1e-6:         # near the origin: norms 1e-8 … 1e-2
        x = torch.tensor(rng.standard_normal((3, 2)) * 10.0 ** rng.uniform(-8, -2, (3, 1)), dtype=F64)
        y = torch.tensor(rng.standard_normal((3, 2)) * 10.0 ** rng.uniform(-8, -2, (3, 1)), dtype=F64)
        fd = 1e-10
    else:
        x = mpref["ball_points"](rng, 3, 2, log10_gap=log10_gap)
        y = mpref["ball_points"](rng, 3, 2, log10_gap=log10_gap)
        fd = 10.0 ** log10_gap[0] * 1e-3          # finite-difference steps must stay inside the ball
    u = torch.tensor(rng.standard_normal((3, 2)) * 0.3, dtype=F64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    u.requires_grad_(True)
    c = torch.tensor(1.3, dtype=F64, requires_grad=True)
    x, y = x / math.sqrt(1.3), y / math.sqrt(1.3)
    opts = {"eps": fd, "atol": 1e-6, "rtol": 1e-3}
    assert torch.autograd.gradcheck(lambda a, b, k: poincare.dist(a, b, c=k), (x, y, c), **opts)
    assert torch.autograd.gradcheck(lambda a, b: poincare.logmap(a, b), (x, y), **opts)
    assert torch.autograd.gradcheck(lambda a, v: poincare.expmap(a, v * fd * 1e3), (x, u), **opts)
    assert torch.autograd.gradcheck(lambda a, b: poincare.mobius_add(a, b), (x, y), **opts)


@pytest.mark.parametrize("scale", [1e-300, 1e-30, 1e-8, 1 - 1e-8, 1 - 1e-15])
def test_gradients_finite_at_the_extremes(scale):
    e = torch.tensor([0.6, 0.8], dtype=F64) * scale
    x = e.clone().requires_grad_(True)
    y = (e * 0.5).clone().requires_grad_(True)
    u = torch.tensor([1e-3, -2e-3], dtype=F64, requires_grad=True)
    loss = poincare.dist(x, y) + poincare.dist0(x) + poincare.expmap(x, u).sum() + poincare.logmap(x, y).sum()
    loss.backward()
    for t in (x, y, u):
        assert bool(torch.isfinite(t.grad).all())
    z = torch.zeros(2, dtype=F64, requires_grad=True)
    poincare.dist(z, torch.zeros(2, dtype=F64)).backward()
    assert bool(torch.isfinite(z.grad).all())


def test_gap_gradient_is_the_naive_one():
    x = torch.tensor([0.6, 0.8 - 1e-9], dtype=F64, requires_grad=True)
    one_minus_cnorm2(x, 2.0 ** -0.0).sum().backward()
    torch.testing.assert_close(x.grad, -2 * x.detach())


# --- bad input ------------------------------------------------------------------------------------

def test_bad_input_is_refused_clearly():
    inside, outside = _t(0.1, 0.2), _t(0.8, 0.8)
    with pytest.raises(ValueError, match=r"strictly inside the Poincaré ball of radius 1/√c = 1; got a point with"):
        poincare.dist(inside, outside)
    with pytest.raises(ValueError, match=r"radius 1/√c = 0.5; got a point with ‖y‖ = 0.58"):
        poincare.dist(inside, _t(0.3, 0.5), c=4.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        poincare.dist(_t(float("nan"), 0.0), inside)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"c is the magnitude of the curvature \(the space has curvature −c\)"):
            poincare.dist(inside, inside, c=bad)
    with pytest.raises(ValueError, match="got c=-2.0"):
        PoincareBall(torch.tensor(-2.0))
    with pytest.raises(TypeError, match="floating-point"):
        poincare.dist(torch.tensor([0, 0]), inside)
    with pytest.raises(ValueError, match=r"margin must lie in \(0, 1\)"):
        poincare.project(inside, margin=1.5)
