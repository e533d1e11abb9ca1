"""CUSP: κ-stereographic ops vs geoopt, Ollivier–Ricci vs closed forms and the dual LP, the κ-GCN layer vs
manify 0.1's KappaGCNLayer, the filter bank at κ = 0 vs its polynomial, the twin's parameter count, configs."""

import math

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from moescope.curved_models.cusp import (
    CuspConfig,
    CuspFilter,
    CuspGNN,
    KappaGCNLayer,
    count_params,
    cusp_edge_weights,
    cusp_laplacian,
    cusp_operator,
    euclidean_twin,
    filter_response,
    gcn_operator,
    twin_widths,
)
from moescope.geometry.curved import kappa_ops as ko
from moescope.geometry.curved.ricci import lazy_walk, ollivier_ricci, wasserstein1

KAPPAS = (-1.0, -0.4, 0.0, 0.6, 1.0)
F64 = torch.float64


def _pts(gen, *shape, scale=0.3):
    return scale * torch.randn(*shape, generator=gen, dtype=F64)


# ----------------------------------------------------------------------------- κ-stereographic ops vs geoopt

def _compare(mine, theirs, inputs, tol=1e-10):
    """Values and gradients (of Σ out · r for a fixed random r) agree."""
    a_in = [t.clone().requires_grad_(True) for t in inputs]
    b_in = [t.clone().requires_grad_(True) for t in inputs]
    a, b = mine(*a_in), theirs(*b_in)
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    r = torch.randn(a.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    ga = torch.autograd.grad((a * r).sum(), a_in)
    gb = torch.autograd.grad((b * r).sum(), b_in)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


@pytest.mark.parametrize("kappa", KAPPAS)
def test_kappa_ops_match_geoopt(kappa, geoopt):
    gm = geoopt.manifolds.stereographic.math
    k = torch.tensor(kappa, dtype=F64)
    g = torch.Generator().manual_seed(0)
    x, y, u = _pts(g, 6, 3), _pts(g, 6, 3), _pts(g, 6, 3, scale=0.5)
    m = torch.randn(4, 3, generator=g, dtype=F64)
    _compare(lambda a, b: ko.mobius_add(a, b, kappa=kappa), lambda a, b: gm.mobius_add(a, b, k=k), [x, y])
    _compare(lambda a: ko.expmap0(a, kappa=kappa), lambda a: gm.expmap0(a, k=k), [u])
    _compare(lambda a: ko.logmap0(a, kappa=kappa), lambda a: gm.logmap0(a, k=k), [x])
    _compare(lambda a, b: ko.dist(a, b, kappa=kappa), lambda a, b: gm.dist(a, b, k=k), [x, y])
    _compare(lambda a, b: ko.mobius_matvec(b, a, kappa=kappa), lambda a, b: gm.mobius_matvec(b, a, k=k), [x, m])
    r = torch.tensor([[0.3], [-1.5], [2.0], [0.7], [1.0], [-0.2]], dtype=F64)
    _compare(lambda a: ko.mobius_scalar_mul(r, a, kappa=kappa), lambda a: gm.mobius_scalar_mul(r, a, k=k), [x])


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("lincomb", [False, True])
def test_weighted_midpoint_matches_geoopt(kappa, lincomb, geoopt):
    gm = geoopt.manifolds.stereographic.math
    k = torch.tensor(kappa, dtype=F64)
    g = torch.Generator().manual_seed(1)
    x = _pts(g, 7, 2)
    w = torch.rand(4, 7, generator=g, dtype=F64) * (torch.rand(4, 7, generator=g) < 0.6)
    w[:, 0] += 0.1                                  # every row has a positive weight
    # geoopt's midpoint carries ~1e-11 of rounding (it is off by that much from W x even at κ = 0)
    _compare(lambda a, b: ko.weighted_midpoint(a, b, kappa=kappa, lincomb=lincomb),
             lambda a, b: gm.weighted_midpoint(a.unsqueeze(0), b, k=k, reducedim=[1], dim=-1, keepdim=False,
                                               lincomb=lincomb),
             [x, w], tol=1e-9)


@pytest.mark.parametrize("kappa", (0.6, 1.0))
def test_positive_curvature_ops_gradcheck(kappa):
    g = torch.Generator().manual_seed(2)
    x, y = _pts(g, 3, 2).requires_grad_(True), _pts(g, 3, 2).requires_grad_(True)
    w = (torch.rand(2, 3, generator=g, dtype=F64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ko.mobius_add(a, b, kappa=kappa), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: ko.dist(a, b, kappa=kappa), (x, y))
    assert torch.autograd.gradcheck(lambda a: ko.logmap0(ko.expmap0(a, kappa=kappa), kappa=kappa), (x,))
    assert torch.autograd.gradcheck(lambda a, b: ko.weighted_midpoint(a, b, kappa=kappa, lincomb=True), (x, w))


@pytest.mark.parametrize("kappa", KAPPAS)
def test_closed_forms(kappa):
    g = torch.Generator().manual_seed(3)
    u = _pts(g, 5, 3, scale=0.4)
    # the metric is 4⟨·,·⟩ at 0 for every κ, so exp₀ moves a distance 2‖u‖
    torch.testing.assert_close(ko.dist(torch.zeros_like(u), ko.expmap0(u, kappa=kappa), kappa=kappa),
                               2 * u.norm(dim=-1), atol=1e-12, rtol=1e-12)
    # M ⊗ x = exp₀(M log₀ x): the identity matrix leaves points alone
    x = ko.expmap0(u, kappa=kappa)
    torch.testing.assert_close(ko.mobius_matvec(torch.eye(3, dtype=F64), x, kappa=kappa), x)
    if kappa > 0:   # x and its antipode are half a great circle apart, so d(z, x) + d(z, −x/(κ‖x‖²)) = π/√κ
        z = _pts(g, 5, 3)
        d = ko.dist(z, x, kappa=kappa) + ko.dist(z, ko.antipode(x, kappa=kappa), kappa=kappa)
        torch.testing.assert_close(d, torch.full_like(d, math.pi / math.sqrt(kappa)), atol=1e-10, rtol=0)


def test_midpoint_at_zero_curvature_is_the_weighted_mean():
    g = torch.Generator().manual_seed(4)
    x, w = _pts(g, 5, 2), torch.rand(3, 5, generator=g, dtype=F64)
    torch.testing.assert_close(ko.weighted_midpoint(x, w, kappa=0.0, lincomb=True), w @ x)
    torch.testing.assert_close(ko.weighted_midpoint(x, w, kappa=0.0), (w @ x) / w.sum(-1, keepdim=True))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", True])
def test_bad_kappa(bad):
    with pytest.raises((ValueError, TypeError), match="kappa"):
        ko.expmap0(torch.zeros(2, dtype=F64), kappa=bad)


# ----------------------------------------------------------------------------- Ollivier–Ricci

def _dual_w1(graph, mu, nu):
    """Kantorovich–Rubinstein: max Σ f (μ − ν) over f with |f(a) − f(b)| ≤ 1 on every edge (1-Lipschitz)."""
    nodes = list(graph.nodes)
    idx = {v: i for i, v in enumerate(nodes)}
    diff = np.zeros(len(nodes))
    for v, m in mu.items():
        diff[idx[v]] += m
    for v, m in nu.items():
        diff[idx[v]] -= m
    rows = []
    for a, b in graph.edges():
        r = np.zeros(len(nodes))
        r[idx[a]], r[idx[b]] = 1.0, -1.0
        rows += [r, -r]
    res = linprog(-diff, A_ub=np.array(rows), b_ub=np.ones(len(rows)), bounds=(None, None), method="highs")
    return -res.fun


@pytest.mark.parametrize("n", (3, 5, 7))
@pytest.mark.parametrize("alpha", (0.0, 0.2, 0.5))
def test_ricci_complete_graph(n, alpha):
    kappa = ollivier_ricci(nx.complete_graph(n), alpha)
    expected = 1 - abs(alpha - (1 - alpha) / (n - 1))
    assert len(kappa) == n * (n - 1) // 2
    np.testing.assert_allclose(list(kappa.values()), expected, atol=1e-9)


@pytest.mark.parametrize("n", (6, 7, 10))
@pytest.mark.parametrize("alpha", (0.0, 0.3, 0.5))
def test_ricci_cycle_is_flat(n, alpha):
    np.testing.assert_allclose(list(ollivier_ricci(nx.cycle_graph(n), alpha).values()), 0.0, atol=1e-9)


def test_ricci_tree_formula():
    tree = nx.random_labeled_tree(30, seed=5)
    for (x, y), k in ollivier_ricci(tree, 0.0).items():
        assert k == pytest.approx(-2 * max(0.0, 1 - 1 / tree.degree(x) - 1 / tree.degree(y)), abs=1e-9)


@pytest.mark.parametrize("alpha", (0.0, 0.5))
def test_ricci_batched_lp_matches_single_and_dual(alpha):
    g = nx.gnp_random_graph(14, 0.3, seed=6)
    hops = dict(nx.all_pairs_shortest_path_length(g))
    kappa = ollivier_ricci(g, alpha)
    for (x, y), k in kappa.items():
        mu, nu = lazy_walk(g, x, alpha), lazy_walk(g, y, alpha)
        single = wasserstein1(mu, nu, lambda a, b: [[hops[i][j] for j in b] for i in a])
        assert 1 - k == pytest.approx(single, abs=1e-9)
        assert single == pytest.approx(_dual_w1(g, mu, nu), abs=1e-9)


def test_uniform_measures_use_an_assignment():
    mu, nu = {0: 0.5, 1: 0.5}, {2: 0.5, 3: 0.5}
    cost = np.array([[3.0, 1.0], [1.0, 3.0]])
    assert wasserstein1(mu, nu, lambda a, b: cost) == pytest.approx(1.0)


def test_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        ollivier_ricci(nx.path_graph(3), 1.5)


def test_cusp_edge_weights_and_laplacian():
    np.testing.assert_allclose(cusp_edge_weights([0.0, 1.0, -2.0]), [math.exp(-1), 0.0, math.exp(-1 / 3)])
    with pytest.raises(ValueError, match="Ollivier"):
        cusp_edge_weights([1.5])
    lap = cusp_laplacian(nx.cycle_graph(8))
    ev = torch.linalg.eigvalsh(lap)
    assert ev.min() > -1e-12 and ev.max() < 2 and abs(float(ev.min())) < 1e-12


# ----------------------------------------------------------------------------- the κ-GCN layer vs manify

def test_kappa_gcn_layer_matches_manify(manify_module):
    kg, mf = manify_module("predictors.kappa_gcn"), manify_module("manifolds")
    signature = [(-1.0, 2), (1.0, 2), (0.0, 2)]
    pm = mf.ProductManifold(signature, stereographic=True)
    g = torch.Generator().manual_seed(7)
    ref = kg.KappaGCNLayer(6, 6, pm).double()
    with torch.no_grad():
        ref.W.copy_(0.5 * torch.randn(6, 6, generator=g, dtype=F64))
    x = torch.cat([_pts(g, 9, 2), _pts(g, 9, 2), _pts(g, 9, 2, scale=1.0)], dim=-1)
    a_hat = kg.get_A_hat(torch.as_tensor(nx.to_numpy_array(nx.gnp_random_graph(9, 0.4, seed=8))))
    mine = KappaGCNLayer(tuple(signature))
    with torch.no_grad():   # manify's matvec uses the diagonal blocks of its (6, 6) matrix, one per factor
        for i, w in enumerate(mine.weights):
            w.copy_(ref.W[2 * i:2 * i + 2, 2 * i:2 * i + 2])
    torch.testing.assert_close(mine(x, a_hat), ref(x, a_hat), atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------- the filter bank

def test_filter_at_zero_curvature_is_the_polynomial():
    """At κ = 0 band b is exactly Σ_k γ_bk Ã^k h, and two bands are averaged with the softmax weights."""
    g = torch.Generator().manual_seed(10)
    op = cusp_operator(nx.gnp_random_graph(10, 0.4, seed=11))
    h = torch.randn(10, 3, generator=g, dtype=F64)
    f = CuspFilter(1, order=3, bands=("low", "high"), ppr_alpha=0.3)
    with torch.no_grad():
        f.mix.copy_(torch.tensor([[0.4, -0.2]], dtype=F64))
    powers = [torch.linalg.matrix_power(op, k) @ h for k in range(4)]
    bands = [sum(f.gamma[b, k] * powers[k] for k in range(4)) for b in range(2)]
    w = torch.softmax(f.mix[0], 0)
    torch.testing.assert_close(f(h, op, kappa=0.0, factor=0), w[0] * bands[0] + w[1] * bands[1])


def test_initial_bands_are_low_and_high_pass():
    f = CuspFilter(1, order=3, bands=("low", "high", "all"), ppr_alpha=0.3)
    lam = np.linspace(0, 2, 21)
    low, high, flat = filter_response(f.gamma, lam)
    assert np.all(np.diff(low) < 0) and np.all(np.diff(high) > 0)
    np.testing.assert_allclose(flat, 1.0)


# ----------------------------------------------------------------------------- model, twin, configs

@pytest.mark.parametrize("cfg", [CuspConfig(), CuspConfig(signature="H2xS2xE2", hidden=8),
                                 CuspConfig(layers=2, order=2), CuspConfig(bands=("low",))])
@pytest.mark.parametrize("shape", [(8, 3), (5, 4)])
def test_twin_has_equal_parameters(cfg, shape):
    model = CuspGNN(cfg, *shape)
    twin = euclidean_twin(model)
    assert count_params(twin) == count_params(model)
    assert len(twin.convs) == 2


def test_twin_widths_refuses_impossible_counts():
    with pytest.raises(ValueError, match="exactly"):
        twin_widths(5, 8, 3, layers=2, width=4)


def test_forward_shapes_and_determinism():
    graph = nx.gnp_random_graph(12, 0.3, seed=12)
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(13), dtype=F64)
    a = CuspGNN(CuspConfig(), 5, 3, seed=4)(x, cusp_operator(graph))
    b = CuspGNN(CuspConfig(), 5, 3, seed=4)(x, cusp_operator(graph))
    assert a.shape == (12, 3) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    twin = euclidean_twin(CuspGNN(CuspConfig(), 5, 3))
    assert twin(x, gcn_operator(graph)).shape == (12, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"signature": "H2xQ3"}, "signature"), ({"curvature": 0.0}, "curvature"), ({"curvature": -1.0}, "curvature"),
    ({"layers": 0}, "layers"), ({"order": 0}, "order"), ({"hidden": 0}, "hidden"), ({"bands": ()}, "bands"),
    ({"bands": ("low", "low")}, "bands"), ({"bands": ("band",)}, "bands"), ({"ppr_alpha": 1.0}, "ppr_alpha"),
    ({"ricci_alpha": -0.1}, "ricci_alpha"), ({"cusp_laplacian": 1}, "cusp_laplacian"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CuspConfig(**kwargs)


def test_bad_model_sizes():
    with pytest.raises(ValueError, match="n_classes"):
        CuspGNN(CuspConfig(), 4, 0)


@pytest.mark.slow
def test_learns_a_planted_signal():
    """Communities of a stochastic block model, the block as label, features that name it weakly: CUSP must
    reach far beyond what the features alone give (train on 40% of the nodes, test on the rest)."""
    rng = np.random.default_rng(14)
    graph = nx.stochastic_block_model([20, 20, 20], [[0.3, 0.01, 0.01], [0.01, 0.3, 0.01], [0.01, 0.01, 0.3]],
                                      seed=15)
    y = torch.as_tensor(np.repeat(np.arange(3), 20))
    x = torch.as_tensor(rng.standard_normal((60, 4)))
    x[torch.arange(60), y] += 1.5
    perm = torch.as_tensor(rng.permutation(60))
    train, test = perm[:24], perm[24:]
    model = CuspGNN(CuspConfig(), 4, 3, seed=0)
    op = cusp_operator(graph)
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=5e-4)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x, op)[train], y[train]).backward()
        opt.step()
    acc = (model(x, op).argmax(-1)[test] == y[test]).double().mean()
    assert acc > 0.85
