"""Riemannian SGD and Adam: equal to torch's in flat space, convergent and on-manifold in curved ones."""

import pytest
import torch

from moescope.geometry.curved import (
    Euclidean,
    Lorentz,
    PoincareBall,
    RiemannianAdam,
    RiemannianSGD,
    Sphere,
    parse_signature,
    poincare,
)

F64 = torch.float64


def _quadratic(p):
    return ((p - torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)) ** 2 * torch.linspace(1, 3, p.numel(),
            dtype=p.dtype).reshape(p.shape)).sum()


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda ps: RiemannianAdam(ps, lr=0.1, betas=(0.8, 0.99), eps=1e-6),
     lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(0.8, 0.99), eps=1e-6)),
    (lambda ps: RiemannianSGD(ps, lr=0.05, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    (lambda ps: RiemannianSGD(ps, lr=0.05), lambda ps: torch.optim.SGD(ps, lr=0.05)),
])
def test_flat_space_reduces_to_torch(ours, theirs):
    g = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, generator=g, dtype=F64)
    a, b = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    opt_a, opt_b = ours([a]), theirs([b])
    for _ in range(25):
        for p, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            _quadratic(p).backward()
            opt.step()
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_adam_first_step_by_hand(geoopt):
    """Step 1 on the ball: m̂ = g_R, v̂ = ‖g_R‖²_x, so x₁ = exp_x(−lr · g_R / (‖g_R‖_x + eps))."""
    gm = geoopt.manifolds.stereographic.math
    k = torch.tensor(-1.0, dtype=F64)
    x0 = torch.tensor([[0.3, -0.5], [0.9, 0.1]], dtype=F64)
    target = torch.tensor([[-0.2, 0.4], [0.0, 0.0]], dtype=F64)
    x = x0.clone().requires_grad_(True)
    opt = RiemannianAdam([x], lr=0.1, manifold=PoincareBall())
    poincare.dist(x, target).square().sum().backward()
    egrad = x.grad.clone()
    opt.step()
    rgrad = gm.egrad2rgrad(x0, egrad, k=k)
    rnorm = gm.norm(x0, rgrad, k=k, keepdim=True)
    expected = gm.expmap(x0, -0.1 * rgrad / (rnorm + 1e-8), k=k)
    torch.testing.assert_close(x.detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("manifold", [PoincareBall(), PoincareBall(2.5), Lorentz(), Sphere(), Sphere(0.5),
                                      parse_signature("H2xS1xE1")], ids=str)
@pytest.mark.parametrize("make", ["adam", "sgd"])
def test_converges_to_a_target_and_stays_on_the_manifold(manifold, make):
    """Minimise d(x, target)²: the unique minimiser is the target (inside the injectivity radius)."""
    g = torch.Generator().manual_seed(1)
    kwargs = {} if hasattr(manifold, "factors") else {"n": 2}
    target = manifold.random(4, std=0.5, generator=g, **kwargs)
    x0 = manifold.expmap(target, manifold.proju(target, 0.3 * torch.randn(target.shape, generator=g, dtype=F64)))
    x = x0.clone().requires_grad_(True)
    opt = (RiemannianAdam([x], lr=0.05, manifold=manifold) if make == "adam"
           else RiemannianSGD([x], lr=0.2, momentum=0.5, manifold=manifold))
    for step in range(400):
        if make == "adam":
            for group in opt.param_groups:
                group["lr"] = 0.05 * (1 - step / 400) + 1e-4
        opt.zero_grad()
        manifold.dist(x, target).square().sum().backward()
        opt.step()
        manifold.check(x.detach())
    assert manifold.dist(x.detach(), target).max().item() < 1e-3


def test_groups_carry_their_own_manifold():
    ball = torch.tensor([[0.2, 0.1]], dtype=F64, requires_grad=True)
    flat = torch.tensor([5.0], dtype=F64, requires_grad=True)
    opt = RiemannianAdam([{"params": [ball], "manifold": PoincareBall()}, {"params": [flat]}], lr=0.1)
    assert isinstance(opt.param_groups[1]["manifold"], Euclidean)
    (poincare.dist0(ball).sum() + flat.square().sum()).backward()
    opt.step()
    assert ball.norm().item() < 0.2236 and flat.item() < 5.0


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: RiemannianSGD(p, lr=0.0), "lr must be a positive finite number; got lr=0.0"),
    (lambda p: RiemannianSGD(p, lr=0.1, momentum=1.0), r"momentum must lie in \[0, 1\); got momentum=1.0"),
    (lambda p: RiemannianAdam(p, lr=float("nan")), "got lr=nan"),
    (lambda p: RiemannianAdam(p, betas=(0.9, 1.0)), r"betas must be two numbers in \[0, 1\)"),
    (lambda p: RiemannianAdam(p, eps=0.0), "eps must be positive"),
])
def test_bad_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(2, requires_grad=True)])
