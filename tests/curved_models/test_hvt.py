"""The hyperbolic ViT: its Poincaré-ball layer ops against geoopt (float64, gradients too), the model, its twin."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from moescope.curved_models.hvt import (
    HVTConfig,
    MobiusLinear,
    accuracy,
    build,
    count_parameters,
    euclidean_twin,
    fit,
    optimizer,
    patchify,
    predict,
    token_radii,
)
from moescope.geometry.curved import poincare
from moescope.geometry.curved import poincare_layers as L
from moescope.geometry.curved._numerics import MAX_DIST0

F64 = torch.float64
CURVATURES = (1.0, 0.3, 2.5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: a second intra-op thread only adds synchronisation (and spins on a busy CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ball(geoopt, c):
    return geoopt.PoincareBall(c=torch.tensor(c, dtype=F64))   # float64 curvature: geoopt's default is float32


def _points(*shape, c, scale=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return poincare.expmap0(scale * torch.randn(*shape, generator=g, dtype=F64), c=c)


def _grads(fn, *tensors):
    ts = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*ts)
    (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    return out.detach(), [t.grad for t in ts]


# ---------------------------------------------------------------- ops vs geoopt


@pytest.mark.parametrize("c", CURVATURES)
def test_mobius_matvec_matches_geoopt_values_and_gradients(geoopt, c):
    x = _points(5, 3, 4, c=c)
    m = 0.4 * torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    ours, g_ours = _grads(lambda m_, x_: L.mobius_matvec(m_, x_, c=c), m, x)
    ref, g_ref = _grads(lambda m_, x_: _ball(geoopt, c).mobius_matvec(m_, x_, project=False), m, x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_mobius_matvec_of_origin_and_kernel_is_origin():
    m = torch.tensor([[1.0, -1.0], [2.0, -2.0]], dtype=F64)           # (1, 1) lies in the kernel
    x = poincare.expmap0(torch.tensor([[0.3, 0.3], [0.0, 0.0]], dtype=F64))
    assert torch.equal(L.mobius_matvec(m, x), torch.zeros(2, 2, dtype=F64))


def test_mobius_matvec_heads_is_one_matvec_per_block_of_rows():
    c = 0.7
    x = _points(3, 5, c=c)
    m = torch.randn(6, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    heads = L.mobius_matvec_heads(m, x, 3, c=c)
    assert heads.shape == (3, 3, 2)
    for h in range(3):
        torch.testing.assert_close(heads[:, h], L.mobius_matvec(m[2 * h:2 * h + 2], x, c=c), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("c", CURVATURES)
def test_mobius_linear_matches_geoopt(geoopt, c):
    x, b = _points(4, 3, c=c), _points(5, c=c, seed=3)
    w = 0.5 * torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    ours, g_ours = _grads(lambda w_, x_, b_: L.mobius_linear(x_, w_, b_, c=c), w, x, b)
    ball = _ball(geoopt, c)
    ref, g_ref = _grads(lambda w_, x_, b_: ball.mobius_add(ball.mobius_matvec(w_, x_, project=False), b_,
                                                           project=False), w, x, b)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)
    for a, r in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("c", CURVATURES)
def test_einstein_midpoint_matches_geoopt_gyromidpoint(geoopt, c):
    x = _points(2, 6, 3, c=c, scale=0.6)
    w = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    ours, g_ours = _grads(lambda x_, w_: L.einstein_midpoint(x_, w_, c=c), x, w)

    def ref_fn(x_, w_):
        ball = _ball(geoopt, c)
        return torch.stack([torch.stack([ball.weighted_midpoint(x_[i], w_[i, j], reducedim=[0], project=False)
                                         for j in range(4)]) for i in range(2)])

    ref, g_ref = _grads(ref_fn, x, w)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_einstein_midpoint_hand_values():
    x = poincare.expmap0(torch.tensor([[0.5, 0.2], [-0.1, 0.4]], dtype=F64))
    # all weight on one point: that point; two antipodal points, equal weights: the origin
    torch.testing.assert_close(L.einstein_midpoint(x, torch.tensor([[0.0, 2.0]], dtype=F64))[0], x[1])
    pair = torch.stack([x[0], -x[0]])
    torch.testing.assert_close(L.einstein_midpoint(pair, torch.ones(1, 2, dtype=F64)),
                               torch.zeros(1, 2, dtype=F64), rtol=0, atol=1e-15)
    # the midpoint of two points lies on the geodesic between them, equally far from both
    m = L.einstein_midpoint(x, torch.ones(1, 2, dtype=F64))[0]
    d0, d1, d01 = poincare.dist(m, x[0]), poincare.dist(m, x[1]), poincare.dist(x[0], x[1])
    torch.testing.assert_close(d0, d1)
    torch.testing.assert_close(d0 + d1, d01)


@pytest.mark.parametrize("c", CURVATURES)
def test_mlr_logits_match_geoopt_distance_to_gyroplane(geoopt, c):
    x, p = _points(7, 4, c=c), _points(3, 4, c=c, seed=6)
    a = torch.randn(3, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    ours, g_ours = _grads(lambda x_, p_, a_: L.mlr_logits(x_, p_, a_, c=c), x, p, a)

    def ref_fn(x_, p_, a_):     # Ganea et al. 2018, eq. 25: λ_p ‖a‖ · signed distance to the gyroplane
        ball = _ball(geoopt, c)
        return ball.lambda_x(p_) * a_.norm(dim=-1) * ball.dist2plane(x_.unsqueeze(-2), p_, a_, signed=True)

    ref, g_ref = _grads(ref_fn, x, p, a)
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)
    for u, v in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)


def test_mlr_logits_tend_to_the_euclidean_classifier_as_c_goes_to_zero():
    c = 1e-10
    g = torch.Generator().manual_seed(8)
    x, p, a = (torch.randn(*s, generator=g, dtype=F64) * 0.3 for s in ((5, 3), (4, 3), (4, 3)))
    torch.testing.assert_close(L.mlr_logits(x, p, a, c=c), 4.0 * ((x.unsqueeze(-2) - p) * a).sum(-1),
                               rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("c", CURVATURES)
def test_pairwise_dist_matches_dist_and_geoopt(geoopt, c):
    x, y = _points(2, 5, 3, c=c, scale=0.8), _points(2, 4, 3, c=c, seed=9, scale=0.8)
    ours, g_ours = _grads(lambda x_, y_: L.pairwise_dist(x_, y_, c=c), x, y)
    ref, g_ref = _grads(lambda x_, y_: poincare.dist(x_.unsqueeze(-2), y_.unsqueeze(-3), c=c), x, y)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for u, v in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours, _ball(geoopt, c).dist(x.unsqueeze(-2), y.unsqueeze(-3)), rtol=1e-10, atol=1e-12)


def test_pairwise_dist_of_a_point_to_itself_has_finite_gradient():
    x = _points(3, 4, c=1.0).requires_grad_(True)
    d = L.pairwise_dist(x, x)
    assert float(d.detach().diagonal().abs().max()) < 1e-6
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_transp0_matches_geoopt(geoopt):
    c = 0.6
    p, v = _points(4, 3, c=c), torch.randn(4, 3, generator=torch.Generator().manual_seed(10), dtype=F64)
    ref = _ball(geoopt, c).transp(torch.zeros_like(p), p, v)
    torch.testing.assert_close(L.transp0(p, v, c=c), ref, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(L.transp0(p, v, c=c), (1 - c * p.square().sum(-1, keepdim=True)) * v)


def test_clip_features_caps_the_distance_from_the_origin():
    u = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=F64)
    clipped = L.clip_features(u, 1.0)
    torch.testing.assert_close(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], dtype=F64))
    for c in CURVATURES:      # d(0, exp0(u)) = 2‖u‖ for every c
        torch.testing.assert_close(poincare.dist0(poincare.expmap0(clipped, c=c), c=c)[:2],
                                   torch.tensor([2.0, 1.0], dtype=F64))


def test_ops_pass_gradcheck():
    c = torch.tensor(0.8, dtype=F64)
    x, p = _points(3, 4, c=0.8), _points(2, 4, c=0.8, seed=11)
    m = torch.randn(4, 4, generator=torch.Generator().manual_seed(12), dtype=F64)
    w = torch.rand(2, 3, dtype=F64, generator=torch.Generator().manual_seed(13)) + 0.1
    a = torch.randn(2, 4, generator=torch.Generator().manual_seed(14), dtype=F64)
    cases = [(lambda m_, x_, c_: L.mobius_matvec_heads(m_, x_, 2, c=c_), (m, x, c)),
             (lambda x_, w_, c_: L.einstein_midpoint(x_, w_, c=c_), (x, w, c)),
             (lambda x_, p_, a_, c_: L.mlr_logits(x_, p_, a_, c=c_), (x, p, a, c)),
             (lambda x_, y_, c_: L.pairwise_dist(x_, y_, c=c_), (x, p, c)),
             (lambda u_: L.clip_features(u_, 0.5), (m,))]
    for fn, args in cases:
        assert torch.autograd.gradcheck(fn, tuple(t.detach().clone().requires_grad_(True) for t in args))


@pytest.mark.parametrize(("call", "match"), [
    (lambda: L.mobius_matvec(torch.ones(2, 3), torch.zeros(4, 2)), "in = 2"),
    (lambda: L.mobius_matvec_heads(torch.ones(4, 2), torch.zeros(1, 2), 3), "heads"),
    (lambda: L.einstein_midpoint(torch.zeros(3, 2), -torch.ones(1, 3)), "non-negative"),
    (lambda: L.einstein_midpoint(torch.zeros(3, 2), torch.ones(1, 4)), "N = 3"),
    (lambda: L.mlr_logits(torch.zeros(2, 3), torch.zeros(4, 3), torch.ones(4, 2)), r"\(K, n\)"),
    (lambda: L.clip_features(torch.ones(2), 0.0), "r must be"),
    (lambda: L.mobius_matvec(torch.ones(2, 2), torch.ones(1, 2)), "inside the Poincaré ball"),
])
def test_ops_refuse_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- the model and its twin

TINY = HVTConfig(dim=8, depth=1, heads=2, mlp_dim=16, n_classes=2)


def test_patchify_orders_patches_row_major():
    img = torch.arange(16.0).reshape(1, 4, 4)
    tokens = patchify(img, 2)
    assert tokens.shape == (1, 4, 4)
    assert tokens[0, 0].tolist() == [0, 1, 4, 5] and tokens[0, 1].tolist() == [2, 3, 6, 7]
    assert tokens[0, 3].tolist() == [10, 11, 14, 15]


@pytest.mark.parametrize("cfg", [HVTConfig(), TINY, HVTConfig(clip=None, heads=4, depth=3)])
def test_twin_has_the_same_parameters_name_by_name(cfg):
    hyp, euc = build(cfg, "hyperbolic"), euclidean_twin(cfg)
    assert count_parameters(hyp) == count_parameters(euc)
    assert {n: p.numel() for n, p in hyp.named_parameters()} == {n: p.numel() for n, p in euc.named_parameters()}


def test_default_parameter_count_by_hand():
    # embed 16·4, pos 16·16; per block: q, k, v 3·16·16, o 16·16 + 16, β 2, fc1 32·16 + 32, fc2 16·32 + 16;
    # head p and a 2·10·16
    per_block = 3 * 256 + 256 + 16 + 2 + 512 + 32 + 512 + 16
    assert count_parameters(build(HVTConfig(), "hyperbolic")) == 64 + 256 + 2 * per_block + 320


def test_both_geometries_start_from_the_same_draws():
    hyp, euc = build(HVTConfig(), "hyperbolic", seed=3), build(HVTConfig(), "euclidean", seed=3)
    e = dict(euc.named_parameters())
    for name, p in hyp.named_parameters():
        if name == "pos":       # exp0 of the twin's position vectors
            torch.testing.assert_close(p, poincare.expmap0(e[name]))
        else:
            assert torch.equal(p, e[name]), name
    assert not torch.equal(build(HVTConfig(), "hyperbolic", seed=4).blocks[0].attn.q.weight,
                           hyp.blocks[0].attn.q.weight)


def test_ball_parameters_are_the_points():
    names = {n for n, p in build(TINY, "hyperbolic").named_parameters()
             if any(p is q for q in build(TINY, "hyperbolic").ball_parameters())}
    model = build(TINY, "hyperbolic")
    ids = {id(p) for p in model.ball_parameters()}
    names = sorted(n for n, p in model.named_parameters() if id(p) in ids)
    assert names == ["blocks.0.attn.o.bias", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.bias", "head.p", "pos"]
    assert euclidean_twin(TINY).ball_parameters() == []


def test_unclipped_mobius_linear_is_the_pure_op():
    c = 0.5
    layer = MobiusLinear(3, 4, c=c).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 3, generator=torch.Generator().manual_seed(15), dtype=F64))
        layer.bias.copy_(_points(4, c=c, seed=16))
    x = _points(6, 3, c=c)
    torch.testing.assert_close(layer(x), L.mobius_linear(x, layer.weight, layer.bias, c=c))
    u = 0.3 * torch.randn(6, 3, generator=torch.Generator().manual_seed(17), dtype=F64)
    torch.testing.assert_close(layer.forward_tangent(u), layer(poincare.expmap0(u, c=c)))


def test_hyperbolic_attention_prefers_near_keys():
    model = build(TINY, "hyperbolic", seed=0)
    h = _points(2, 5, 8, c=1.0).float()
    attn = model.blocks[0].attn
    out, alpha = attn(h, return_weights=True)
    assert out.shape == (2, 5, 8) and alpha.shape == (2, 2, 5, 5)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 2, 5))
    with torch.no_grad():     # the weights are softmax(−β d(q_i, k_j)): order of weights = reverse order of distances
        u = poincare.logmap0(h)
        q, k = (m.forward_tangent(u).transpose(1, 2) for m in (attn.q, attn.k))
        d = L.pairwise_dist(q, k)
    assert torch.equal(alpha.argsort(-1, descending=True), d.argsort(-1))


def _two_digits(n_train: int):
    d = load_digits(n_class=2)
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_learns_zeros_from_ones_in_a_few_steps():
    xtr, ytr, xte, yte = _two_digits(120)
    model = build(TINY, "hyperbolic", seed=0)
    history = fit(model, xtr, ytr, epochs=12, lr=3e-2, batch_size=30, seed=0)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert accuracy(model, xte, yte) > 0.9          # chance is 0.5
    assert predict(model, xte).shape == yte.shape


def test_float32_stays_finite_far_from_the_origin():
    model = build(HVTConfig(), "hyperbolic", seed=0)
    with torch.no_grad():
        model.pos.copy_(poincare.expmap0(4.0 * torch.randn(16, 16, generator=torch.Generator().manual_seed(0))))
    images = 50.0 * torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(1))   # pixels far out of range
    loss = torch.nn.functional.cross_entropy(model(images), torch.arange(8))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer(model, 1e-2).step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert float(token_radii(model, images).max()) < MAX_DIST0[torch.float32]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dim": 15}, "heads must divide dim=15"),
    ({"patch_size": 3}, "patch_size must divide image_size=8"),
    ({"c": 0.0}, "positive finite"),
    ({"c": math.inf}, "positive finite"),
    ({"clip": -1.0}, "clip"),
    ({"depth": 0}, "depth must be a positive int"),
    ({"heads": 2.0}, "heads must be a positive int"),
    ({"n_classes": 1}, "n_classes must be at least 2"),
])
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HVTConfig(**kwargs)


def test_bad_calls_raise():
    with pytest.raises(ValueError, match="geometry must be one of"):
        build(TINY, "spherical")
    model = build(TINY, "hyperbolic")
    with pytest.raises(ValueError, match="images must be a floating"):
        predict(model, torch.zeros(3, 64))
    with pytest.raises(ValueError, match="labels must be"):
        fit(model, torch.zeros(3, 8, 8), torch.zeros(2, dtype=torch.long), epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.long), epochs=0)


def test_training_is_deterministic():
    xtr, ytr, _, _ = _two_digits(60)
    runs = []
    for _ in range(2):
        model = build(TINY, "hyperbolic", seed=5)
        runs.append((fit(model, xtr, ytr, epochs=1, batch_size=30, seed=5)["train_loss"],
                     np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
