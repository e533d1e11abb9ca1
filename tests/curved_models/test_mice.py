"""Mixture-of-curvature experts: the Lorentz operations against geoopt (float64, gradients included), the
c → 0 limit (the Euclidean MoE with the same weights), every router, parameter parity with the twin,
float32 numerics, bad configurations, and a planted routing signal."""

import math

import pytest
import torch
import torch.nn.functional as F

from moescope.curved_models import mice
from moescope.curved_models.mice import (
    EuclideanExperts,
    LorentzExperts,
    MiCEConfig,
    build_mice,
    build_twin,
    count_params,
    expmap0,
    logmap0,
    lorentz_linear,
    lorentz_swiglu,
)
from moescope.geometry.curved import lorentz
from moescope.moe import Experts, MoELayer, TopKRouter
from moescope.moe.routers import ROUTERS

CURVATURES = (0.05, 1.0, 3.0)


def _k(c):
    """geoopt's hyperboloid is ⟨x, x⟩_L = −k: k = 1/c for our curvature −c (float64; geoopt's Lorentz(k) stores a
    float32 k, so the tests call its math functions with this one)."""
    return torch.tensor(1.0 / c, dtype=torch.float64)


def _tangent(n=5, rows=7, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(rows, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("c", CURVATURES)
def test_expmap0_matches_geoopt_with_gradients(geoopt, c):
    v = _tangent(scale=0.8).requires_grad_(True)
    cc = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    ours = expmap0(v, c=cc)
    w = torch.randn_like(ours)
    (ours * w).sum().backward()
    g_ours = (v.grad.clone(), cc.grad.clone())
    v.grad, cc.grad = None, None
    k = 1.0 / cc
    ref = geoopt.manifolds.lorentz.math.expmap0(F.pad(v, (1, 0)), k=k)
    (ref * w).sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours[0], v.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_ours[1], cc.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c", CURVATURES)
def test_logmap0_matches_geoopt_with_gradients(geoopt, c):
    # A point moves with c only on its sheet, so both sides take the space-like coordinates y_s and c as the
    # inputs and lift y_s onto the sheet of c: y = (√(1/c + ‖y_s‖²), y_s).
    ys = _tangent(seed=1, scale=1.3).requires_grad_(True)
    cc = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    ours = logmap0(lorentz.project(F.pad(ys, (1, 0)), c=cc), c=cc)
    w = torch.randn_like(ours)
    (ours * w).sum().backward()
    g_ours = (ys.grad.clone(), cc.grad.clone())
    ys.grad, cc.grad = None, None
    k = 1.0 / cc
    ref = geoopt.manifolds.lorentz.math.logmap0(geoopt.manifolds.lorentz.math.project(F.pad(ys, (1, 0)), k=k), k=k)
    torch.testing.assert_close(ref[..., 0], torch.zeros_like(ref[..., 0]), atol=1e-10, rtol=0)  # tangent at o
    (ref[..., 1:] * w).sum().backward()
    torch.testing.assert_close(ours, ref[..., 1:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_ours[0], ys.grad, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(g_ours[1], cc.grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("c", CURVATURES)
def test_lorentz_linear_and_swiglu_match_geoopt_projection(geoopt, c):
    g = torch.Generator().manual_seed(2)
    gm = geoopt.manifolds.lorentz.math
    x = gm.expmap0(F.pad(_tangent(seed=2), (1, 0)), k=_k(c))
    w, b = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    lin = lorentz_linear(x, w, b, c=c)
    torch.testing.assert_close(lin, gm.project(F.pad(x[..., 1:] @ w.T + b, (1, 0)), k=_k(c)), rtol=1e-12, atol=1e-12)
    lorentz.check_on_hyperboloid(lin, c)
    act = lorentz_swiglu(lin, c=c)
    gate, up = lin[..., 1:].chunk(2, dim=-1)
    torch.testing.assert_close(act, gm.project(F.pad(F.silu(gate) * up, (1, 0)), k=_k(c)), rtol=1e-12, atol=1e-12)
    lorentz.check_on_hyperboloid(act, c)


def test_ops_gradcheck_in_float64():
    v = _tangent(n=3, rows=4, seed=3, scale=0.7).requires_grad_(True)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def chain(v, c, w, b):
        return logmap0(lorentz_swiglu(lorentz_linear(expmap0(v, c=c), w, b, c=c), c=c), c=c)

    assert torch.autograd.gradcheck(chain, (v, c, w, b))


def test_round_trip_is_identity_over_seeds_and_scales():
    """log_o ∘ exp_o = id, to the precision the hyperboloid has: a point at distance d from the origin carries
    x₀ ≈ cosh(√c d)/√c and loses about log₂ cosh(√c d) bits (Yu & De Sa 2019), so the tolerance grows with it."""
    u = torch.finfo(torch.float64).eps
    for seed in range(5):
        for scale in (1e-6, 0.1, 1.0, 5.0):
            for c in (1e-3, 0.1, 2.0):
                v = _tangent(seed=seed, scale=scale)
                r = math.sqrt(c) * v.norm(dim=-1, keepdim=True)
                err = (logmap0(expmap0(v, c=c), c=c) - v).abs() / v.norm(dim=-1, keepdim=True)
                assert bool((err <= 64 * u * torch.cosh(r)).all())


def _pair(c: float, dtype=torch.float64):
    """A MiCE layer with every curvature c and the Euclidean MoELayer with the same router and weights."""
    torch.manual_seed(0)
    cfg = MiCEConfig(hidden=8, num_experts=4, top_k=2, intermediate=6, curvature_init=(c, c), min_curvature=0.0)
    ref = MoELayer(router=TopKRouter(8, 4, 2), experts=Experts(4, 8, 6)).to(dtype)
    layer = build_mice(cfg, experts=ref.experts, router=ref.router).to(dtype)
    return layer, ref


def test_zero_curvature_limit_is_the_euclidean_moe():
    """Oracle: as every c_e → 0 the MiCE layer tends to moescope's MoELayer with the same weights, at rate O(c)."""
    x = _tangent(n=8, rows=20, seed=4, scale=1.5)
    errs = []
    for c in (1e-3, 1e-5, 1e-7):
        layer, ref = _pair(c)
        errs.append(float((layer(x).hidden - ref(x).hidden).detach().abs().max()))
    assert errs[-1] < 1e-5                                                  # ~20 c at these norms
    assert 30 < errs[0] / errs[1] < 300 and 30 < errs[1] / errs[2] < 300     # first order in c


def test_identity_experts_give_the_identity():
    """Experts whose FFN is the identity map: log∘exp = id, so the layer returns Σ_j w_j x = x (weights sum 1)."""
    layer, _ = _pair(0.5)
    x = _tangent(n=8, rows=10, seed=5)
    ident = lambda e, rows: logmap0(expmap0(rows, c=layer.experts.curvatures[e].double()),  # noqa: E731
                                    c=layer.experts.curvatures[e].double())
    layer.experts.expert = ident
    torch.testing.assert_close(layer(x).hidden, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("router", [r.__name__ for r in ROUTERS])
def test_every_router_trains_and_twin_has_equal_parameters(router):
    cfg = MiCEConfig(hidden=8, num_experts=4, top_k=2, intermediate=6, router=router)
    torch.manual_seed(1)
    layer, twin = build_mice(cfg), build_twin(cfg)
    x = torch.randn(2, 5, 8)
    out = layer(x)
    assert out.hidden.shape == x.shape and torch.isfinite(out.hidden).all()
    out.hidden.square().sum().backward()
    assert torch.isfinite(layer.experts.rho.grad).all() and layer.experts.rho.grad.abs().sum() > 0
    assert twin(x).hidden.shape == x.shape
    cm, ct = count_params(layer), count_params(twin)
    assert cm == ct
    per = 2 * 6 * 8 + 8 * 6 + 1                            # gate/up, down, one curvature (or gain)
    assert cm["per_expert"] == per and cm["total"] == cm["router"] + 4 * per
    assert cm["active"] == cm["router"] + layer.router.mean_experts_per_token * per


def test_float32_stays_finite_for_large_inputs_and_curvatures():
    cfg = MiCEConfig(hidden=8, num_experts=2, top_k=1, intermediate=6, curvature_init=(1.0, 50.0))
    torch.manual_seed(2)
    layer = build_mice(cfg)
    x = (torch.randn(16, 8) * torch.logspace(-3, 4, 16).unsqueeze(1)).requires_grad_(True)
    out = layer(x).hidden
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.experts.rho.grad).all()


def test_curvatures_are_positive_and_start_where_configured():
    cfg = MiCEConfig(num_experts=3, curvature_init=(0.01, 1.0))
    bank = build_mice(cfg).experts
    torch.testing.assert_close(bank.curvatures, torch.tensor([0.01, 0.1, 1.0]), rtol=1e-5, atol=0)
    with torch.no_grad():
        bank.rho.fill_(-100.0)
    assert bool((bank.curvatures >= cfg.min_curvature).all())
    fixed = build_mice(MiCEConfig(learn_curvature=False)).experts
    assert "rho" not in dict(fixed.named_parameters())


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden": 0}, "hidden"), ({"top_k": 5}, "top_k"), ({"router": "nope"}, "router"),
    ({"curvature_init": (0.1,)}, "curvature_init"), ({"curvature_init": (0.1, math.inf)}, "curvature_init"),
    ({"curvature_init": (0.5, 0.1)}, "curvature_init"), ({"min_curvature": -1.0}, "min_curvature"),
    ({"min_curvature": 0.2, "curvature_init": (0.1, 0.3)}, "min_curvature"),
])
def test_bad_configs_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MiCEConfig(**kwargs)


def test_bad_parts_raise_clear_errors():
    with pytest.raises(ValueError, match="curvatures"):
        LorentzExperts(2, 4, 3, curvatures=[0.1])
    with pytest.raises(ValueError, match="SwiGLU"):
        EuclideanExperts(2, 4, 3).load_experts(Experts(2, 4, 3, gate="none"))
    with pytest.raises(ValueError, match="float64"):
        build_mice(MiCEConfig(hidden=4, intermediate=3))(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="LorentzExperts"):
        mice.MiCELayer(router=TopKRouter(4, 2, 1), experts=Experts(2, 4, 3))
    with pytest.raises(ValueError, match="positive"):
        expmap0(torch.zeros(2, 3), c=0.0)


@pytest.mark.slow
def test_learns_a_planted_routing_signal():
    """Two token types need opposite maps (y_s = +x_s or −x_s on the features, the type in x₀ = ±2). One SwiGLU
    expert of width 5 cannot flip the sign with the type (silu ≥ −0.28); two experts, top-1, can, by routing
    on x₀. The layer fits the target and routes by type. (Top-1 weights are not renormalised, so the
    router is trained by the loss, not only by the balance term.)"""
    g = torch.Generator().manual_seed(0)
    n, d = 96, 6
    kind = torch.randint(0, 2, (n,), generator=g)
    feats = torch.randn(n, d - 1, generator=g)
    x = torch.cat([(4.0 * kind - 2.0).unsqueeze(1), feats], dim=1)
    y = torch.cat([torch.zeros(n, 1), torch.where(kind.bool().unsqueeze(1), feats, -feats)], dim=1)
    torch.manual_seed(0)
    layer = build_mice(MiCEConfig(hidden=d, num_experts=2, top_k=1, intermediate=5, normalize_topk=False))
    opt = torch.optim.Adam(layer.parameters(), lr=3e-2)
    base = float(y.square().mean())
    for _ in range(80):
        out = layer(x)
        loss = F.mse_loss(out.hidden, y) + 0.01 * out.routing.aux_losses["load_balance"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = layer(x)
    assert float(F.mse_loss(out.hidden, y)) < 0.1 * base
    choice = out.routing.indices[:, 0]
    purity = max(float((choice == kind).float().mean()), float((choice != kind).float().mean()))
    assert purity > 0.9
