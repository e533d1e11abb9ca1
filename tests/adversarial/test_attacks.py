"""FGSM / FGM / PGD: torchattacks as the oracle, then the invariants every attack must keep."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from moescope.adversarial import (
    FGM,
    FGSM,
    PGD,
    PGDL2,
    evaluate_attack,
    fgm,
    fgsm,
    pgd,
    random_noise,
)
from moescope.adversarial.data import Normalize

torchattacks = pytest.importorskip("torchattacks")


def _bare(model: nn.Sequential) -> tuple[nn.Module, tuple[float, float]]:
    """The model without its Normalize layer, and that layer's (mean, std)."""
    norm = model[0]
    assert isinstance(norm, Normalize)
    return nn.Sequential(*list(model)[1:]), (float(norm.mean), float(norm.std))


# --- torchattacks as an independent oracle -------------------------------------------------

@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("eps", [0.02, 8 / 255, 0.1])
def test_fgsm_matches_torchattacks(digits_models, batch, which, eps):
    model = digits_models[which]
    x, y = batch
    ours = fgsm(model, x, y, eps=eps)
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert (ours != x).any()


@pytest.mark.parametrize("which", [0, 1])
def test_pgd_linf_matches_torchattacks_without_random_start(digits_models, batch, which):
    model = digits_models[which]
    x, y = batch
    ours = pgd(model, x, y, eps=0.1, alpha=0.02, steps=7, random_start=False)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=7, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_pgd_defaults_and_random_start_match_torchattacks(digits_models, batch):
    """Same global seed, same random start: the draws come in torchattacks' order."""
    model = digits_models[1]
    x, y = batch
    torch.manual_seed(123)
    theirs = torchattacks.PGD(model)(x, y)           # eps 8/255, alpha 2/255, 10 steps, random start
    torch.manual_seed(123)
    ours = PGD(model)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.manual_seed(5)
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=5)(x, y)
    torch.manual_seed(5)
    ours = PGDL2(model, eps=0.5, alpha=0.1, steps=5)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_pgd_l2_matches_torchattacks_without_random_start(digits_models, batch):
    model = digits_models[1]
    x, y = batch
    ours = pgd(model, x, y, eps=0.7, alpha=0.15, steps=8, norm="l2", random_start=False)
    theirs = torchattacks.PGDL2(model, eps=0.7, alpha=0.15, steps=8, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_targeted_matches_torchattacks(digits_models, batch):
    model = digits_models[1]
    x, y = batch
    target = (y + 1) % 10
    atk = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=5, random_start=False)
    atk.set_mode_targeted_by_function(lambda inputs, labels: (labels + 1) % 10, quiet=True)
    theirs = atk(x, y)
    ours = pgd(model, x, target, eps=0.1, alpha=0.02, steps=5, random_start=False, targeted=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_preprocessing_matches_torchattacks_normalization(digits_models, batch):
    """preprocessing=(mean, std) on the bare model == the model with its Normalize layer ==
    torchattacks with set_normalization_used on the bare model."""
    bare, (mean, std) = _bare(digits_models[1])
    x, y = batch
    inside = fgsm(digits_models[1], x, y, eps=0.05)
    outside = fgsm(bare, x, y, eps=0.05, preprocessing=(mean, std))
    atk = torchattacks.FGSM(bare, eps=0.05)
    atk.set_normalization_used(mean=[mean], std=[std])
    theirs = atk.inverse_normalize(atk(atk.normalize(x), y))
    torch.testing.assert_close(outside, inside, rtol=0, atol=1e-6)
    torch.testing.assert_close(outside, theirs, rtol=0, atol=1e-5)


# --- invariants ----------------------------------------------------------------------------

ATTACKS = {
    "fgsm": lambda m, x, y, eps, **kw: fgsm(m, x, y, eps=eps, **kw),
    "fgm": lambda m, x, y, eps, **kw: fgm(m, x, y, eps=eps, **kw),
    "pgd": lambda m, x, y, eps, **kw: pgd(m, x, y, eps=eps, alpha=eps / 4, steps=3,
                                          generator=torch.Generator().manual_seed(0), **kw),
    "pgd_l2": lambda m, x, y, eps, **kw: pgd(m, x, y, eps=eps, alpha=eps / 4, steps=3, norm="l2",
                                             generator=torch.Generator().manual_seed(0), **kw),
}
NORM = {"fgsm": float("inf"), "fgm": 2, "pgd": float("inf"), "pgd_l2": 2}


@pytest.mark.parametrize("name", ATTACKS)
def test_eps_zero_returns_x(digits_models, batch, name):
    x, y = batch
    out = ATTACKS[name](digits_models[1], x, y, 0.0)
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(ATTACKS)), eps=st.floats(1e-3, 2.0), which=st.integers(0, 1))
def test_within_clip_and_eps_ball(digits_models, digits, name, eps, which):
    x, y = digits.x_test[:16], digits.y_test[:16]
    out = ATTACKS[name](digits_models[which], x, y, eps)
    assert out.min() >= 0 and out.max() <= 1
    size = torch.linalg.vector_norm((out - x).flatten(1), ord=NORM[name], dim=1)
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd_l2"])
def test_targeted_raises_the_target_score(digits_models, batch, name):
    model = digits_models[1]
    x, y = batch
    target = (y + 3) % 10
    out = ATTACKS[name](model, x, target, 0.05, targeted=True)
    with torch.no_grad():
        before = F.log_softmax(model(x), 1).gather(1, target[:, None])
        after = F.log_softmax(model(out), 1).gather(1, target[:, None])
    assert (after > before).float().mean() > 0.95
    assert after.mean() > before.mean()


class _Dropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("name", ATTACKS)
def test_caller_model_and_tensors_unchanged(batch, name):
    torch.manual_seed(0)
    model = _Dropout().train()
    model.body[2].eval()  # a mixed state: each submodule's own flag must come back
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch
    x_copy, y_copy = x.clone(), y.clone()
    out1 = ATTACKS[name](model, x, y, 0.05)
    out2 = ATTACKS[name](model, x, y, 0.05)
    assert torch.equal(out1, out2)  # eval mode during the attack: dropout is off
    assert model.training and model.body.training and not model.body[2].training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert not out1.requires_grad


def test_y_none_attacks_the_predictions(digits_models, batch):
    model = digits_models[1]
    x, _ = batch
    with torch.no_grad():
        pred = model(x).argmax(1)
    torch.testing.assert_close(fgsm(model, x, eps=0.05), fgsm(model, x, pred, eps=0.05), rtol=0, atol=0)
    torch.testing.assert_close(pgd(model, x, random_start=False), pgd(model, x, pred, random_start=False),
                               rtol=0, atol=0)


def test_object_style_equals_function_style(digits_models, batch):
    model = digits_models[0]
    x, y = batch
    assert torch.equal(FGSM(model, eps=0.05)(x, y), fgsm(model, x, y, eps=0.05))
    assert torch.equal(FGM(model, eps=0.5)(x, y), fgm(model, x, y, eps=0.5))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(PGD(model, 0.1, 0.03, 4, generator=g1)(x, y),
                       pgd(model, x, y, eps=0.1, alpha=0.03, steps=4, generator=g2))
    assert "eps=0.05" in repr(FGSM(model, eps=0.05))


def test_each_sample_is_attacked_on_its_own(digits_models, batch):
    """The summed loss makes a row's result independent of the rest of the batch."""
    model = digits_models[1]
    x, y = batch
    full = pgd(model, x, y, eps=0.1, alpha=0.03, steps=5, norm="l2", random_start=False)
    part = pgd(model, x[5:9], y[5:9], eps=0.1, alpha=0.03, steps=5, norm="l2", random_start=False)
    torch.testing.assert_close(full[5:9], part, rtol=0, atol=1e-6)


def test_fgsm_is_the_lecture_formula(digits_models, batch):
    """x_adv = clip(x + ε·sign(∇ₓ CE)), computed here by hand."""
    model = digits_models[0]
    x, y = batch
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y).backward()
    expected = (x + 0.07 * xr.grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, eps=0.07), expected)


def test_unbounded_inputs_with_clip_none(digits_models, batch):
    model = digits_models[0]
    x, y = batch
    out = fgsm(model, x, y, eps=0.5, clip=None)
    assert out.min() < 0 and out.max() > 1
    torch.testing.assert_close((out - x).abs(), torch.full_like(x, 0.5).where(out != x, 0.0))


def test_probabilities_warn(digits_models, batch):
    x, y = batch
    probs = nn.Sequential(digits_models[0], nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="look like probabilities"):
        fgsm(probs, x, y)


def test_random_noise_is_random_signs(batch):
    x, _ = batch
    x = x.clamp(0.2, 0.8)
    out = random_noise(x, eps=0.1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((out - x).abs(), torch.full_like(x, 0.1))
    assert 0.4 < float(((out - x) > 0).float().mean()) < 0.6
    l2 = random_noise(x, eps=0.1, norm="l2", clip=None, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.linalg.vector_norm((l2 - x).flatten(1), dim=1), torch.full((len(x),), 0.1))


def test_evaluate_counts_success_only_on_clean_correct(digits_models, batch):
    model = digits_models[1]
    x, y = batch
    with torch.no_grad():
        pred = model(x).argmax(1)
    y_bad = y.clone()
    y_bad[:4] = (pred[:4] + 1) % 10              # four points the model gets "wrong"
    s = evaluate_attack(model, x, y_bad, x.clone())
    assert s.n == 40 and s.n_clean_correct == int((pred == y_bad).sum())
    assert s.success_rate == 0.0 and s.robust_accuracy == s.clean_accuracy
    assert s.mean_linf == 0.0 and s.mean_l2 == 0.0
    adv = pgd(model, x, y_bad, eps=0.3, alpha=0.1, steps=10, random_start=False)
    s = evaluate_attack(model, x, y_bad, adv)
    with torch.no_grad():
        flipped = (model(adv).argmax(1) != y_bad) & (pred == y_bad)
    assert s.success_rate == pytest.approx(float(flipped.sum()) / s.n_clean_correct)


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, ValueError, "eps must be a finite real number >= 0; got eps=-0.1"),
        ({"eps": float("nan")}, ValueError, "eps must be a finite"),
        ({"eps": "big"}, TypeError, "eps must be a real number"),
        ({"clip": (1.0, 0.0)}, ValueError, "low < high"),
        ({"clip": (0.0,)}, TypeError, "clip must be None or a pair"),
        ({"norm": "l1"}, ValueError, "norm must be 'linf' or 'l2'; got norm='l1'"),
        ({"steps": -1}, ValueError, "steps must be an integer >= 0"),
        ({"alpha": -1.0}, ValueError, "alpha must be"),
        ({"targeted": True, "y": None}, ValueError, "targeted=True needs the target classes"),
    ],
)
def test_bad_arguments_name_the_value(digits_models, batch, kwargs, error, match):
    x, y = batch
    kwargs = dict(kwargs)
    y = kwargs.pop("y", y)
    with pytest.raises(error, match=match):
        pgd(digits_models[0], x, y, **kwargs)


def test_bad_inputs_name_the_value(digits_models, batch):
    model = digits_models[0]
    x, y = batch
    with pytest.raises(ValueError, match=r"y must have shape \(N,\) = \(40,\); got shape=\(39,\)"):
        fgsm(model, x, y[:-1])
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        fgsm(model, x, y.float())
    with pytest.raises(ValueError, match=r"x must lie within clip=\(0.0, 1.0\)"):
        fgsm(model, x * 2 + 0.5, y)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fgsm(model, (x * 16).long(), y)
    with pytest.raises(ValueError, match="batch dimension"):
        fgsm(model, x[0, 0, 0], y)
    with pytest.raises(ValueError, match=r"logits of shape \(N, K\)"):
        fgsm(nn.Flatten(0), x, y)
