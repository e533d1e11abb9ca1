"""DeepFool: the affine closed form in one step, and smaller than FGSM on the digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moescope.adversarial import DeepFool, deepfool, deepfool_search, l2_fraction, minimal_fast_gradient


def _closed_form(model, x: torch.Tensor, candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """min_k |f_k − f_y| / ‖w_k − w_y‖ and its step (w_k − w_y)|f_k − f_y|/‖w_k − w_y‖², in numpy."""
    W = model.w.detach().numpy()
    f = (x.flatten(1) @ model.w.T + model.b).detach().numpy()
    dist, steps = [], []
    for fi in f:
        y = int(fi.argmax())
        others = [k for k in np.argsort(-fi) if k != y][: (candidates or len(fi)) - 1]
        cand = [(abs(fi[k] - fi[y]) / np.linalg.norm(W[k] - W[y]), k) for k in others]
        r, k = min(cand)
        dist.append(r)
        steps.append((W[k] - W[y]) * abs(fi[k] - fi[y]) / np.linalg.norm(W[k] - W[y]) ** 2)
    return np.array(dist), np.array(steps)


@pytest.mark.parametrize(("d", "k", "seed"), [(5, 3, 0), (64, 10, 1), (300, 12, 2)])
def test_affine_closed_form_in_one_step(affine, d, k, seed):
    model = affine(d, k, seed)
    x = torch.randn(16, d, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    res = deepfool_search(model, x, clip=None, candidates=k)
    dist, step = _closed_form(model, x)
    assert (res.iterations == 1).all()
    assert res.fooled.all()
    size = torch.linalg.vector_norm(res.perturbation, dim=1).numpy()
    np.testing.assert_allclose(size, 1.02 * dist, rtol=1e-10)
    np.testing.assert_allclose(res.perturbation.numpy(), 1.02 * step, rtol=1e-9, atol=1e-12)


def test_candidates_limit_the_classes(affine):
    model = affine(20, 10, 3)
    x = torch.randn(32, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = deepfool_search(model, x, clip=None, candidates=3, overshoot=0.0, steps=1)
    dist, _ = _closed_form(model, x, candidates=3)
    full, _ = _closed_form(model, x)
    np.testing.assert_allclose(torch.linalg.vector_norm(res.perturbation, dim=1).numpy(), dist, rtol=1e-10)
    assert (dist >= full - 1e-12).all() and (dist > full + 1e-9).any()


def test_already_misclassified_points_are_left_alone(affine):
    model = affine(8, 4, 5)
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 4
    res = deepfool_search(model, x, wrong, clip=None)
    assert (res.iterations == 0).all() and torch.equal(res.x_adv, x) and res.fooled.all()


def test_deepfool_beats_minimal_fgsm_on_digits(digits_models, digits):
    """ρ_adv = mean ‖r‖₂/‖x‖₂ (Moosavi-Dezfooli et al. 2016, Table 1): DeepFool < smallest FGSM."""
    x, y = digits.x_test[:80], digits.y_test[:80]
    for model in digits_models:
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        xs, ys = x[ok], y[ok]
        res = deepfool_search(model, xs, ys)
        assert res.fooled.float().mean() >= 0.95
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        eps, adv = minimal_fast_gradient(model, xs, ys)
        both = res.fooled & torch.isfinite(eps)
        rho_df = l2_fraction(res, xs)[both].mean()
        rho_fgsm = (torch.linalg.vector_norm((adv - xs).flatten(1), dim=1)
                    / torch.linalg.vector_norm(xs.flatten(1), dim=1))[both].mean()
        assert rho_df < rho_fgsm


def test_box_aware_steps_fool_points_clipping_would_stall(digits_models, digits):
    """Half the digits' pixels are 0: plain clipping stalls, the box-aware step does not."""
    x, y = digits.x_test[:60], digits.y_test[:60]
    res = deepfool_search(digits_models[1], x, y)
    with torch.no_grad():
        ok = digits_models[1](x).argmax(1) == y
    assert res.fooled[ok].all()
    assert res.iterations[ok].float().mean() < 5


def test_matches_torchattacks_when_one_step_suffices(affine):
    """torchattacks scales every step by 1.02, we scale the total: the same after one step."""
    torchattacks = pytest.importorskip("torchattacks")
    model = affine(30, 5, 7, dtype=torch.float32)
    gen = torch.Generator().manual_seed(8)
    x = 0.5 + 0.01 * torch.randn(12, 30, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    ours = deepfool(model, x, y, candidates=5)
    theirs = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_object_style_and_mode_restored(digits_models, batch):
    model = digits_models[1].train()
    try:
        x, y = batch
        out = DeepFool(model)(x, y)
        assert model.training
        assert torch.equal(out, deepfool(model, x, y))
    finally:
        model.eval()


@pytest.mark.parametrize(("kwargs", "match"), [({"candidates": 1}, "candidates must be an integer >= 2"),
                                               ({"overshoot": -0.1}, "overshoot must be"),
                                               ({"steps": -2}, "steps must be an integer >= 0")])
def test_bad_arguments(digits_models, batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        deepfool(digits_models[0], *batch, **kwargs)


def test_one_class_models_are_rejected(affine, batch):
    with pytest.raises(ValueError, match="DeepFool needs at least 2 classes"):
        deepfool(affine(64, 1, 0, dtype=torch.float32), batch[0])
