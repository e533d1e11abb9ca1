"""Digits, upsampling and training: offline, in range, seeded, and the global RNG left alone."""

from __future__ import annotations

import pytest
import torch

from moescope.adversarial import data as D


def test_digits_split(digits):
    assert digits.x_train.shape == (1297, 1, 8, 8) and digits.x_test.shape == (500, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32
    assert float(digits.x_train.min()) == 0.0 and float(digits.x_train.max()) == 1.0
    values = torch.unique(digits.x_train * 16)
    assert torch.equal(values, values.round())        # grey levels 0..16 divided by 16
    assert set(digits.y_test.tolist()) == set(range(10))
    assert digits.dim == 64


def test_upsample_keeps_range_and_mean(digits):
    x = digits.x_test[:20]
    for size in (16, 32):
        up = D.upsample(x, size)
        assert up.shape == (20, 1, size, size)
        assert up.min() >= 0 and up.max() <= 1
        # bilinear resizing by an integer factor keeps each image's mean up to the border
        torch.testing.assert_close(up.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.02, rtol=0)
    assert torch.equal(D.upsample(x, 8), x)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        D.upsample(x, 0)
    with pytest.raises(ValueError, match=r"x must be images of shape \(N, C, H, W\)"):
        D.upsample(x.flatten(1), 16)


def test_training_is_seeded_and_leaves_global_rng_alone(digits):
    torch.manual_seed(42)
    state = torch.random.get_rng_state()
    weights = []
    for _ in range(2):
        model = D.softmax_regression((1, 8, 8), 10, seed=3)
        D.train_classifier(model, digits.x_train[:200], digits.y_train[:200], epochs=2, seed=3)
        weights.append(model[-1].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert torch.equal(torch.random.get_rng_state(), state)
    other = D.softmax_regression((1, 8, 8), 10, seed=4)
    assert not torch.equal(other[-1].weight, D.softmax_regression((1, 8, 8), 10, seed=3)[-1].weight)


def test_models_learn_the_digits(digits_models, digits):
    for model in digits_models:
        assert D.accuracy(model, digits.x_test, digits.y_test) > 0.9
        assert not model.training


def test_normalize_inside_the_model():
    norm = D.Normalize(0.5, 0.25)
    torch.testing.assert_close(norm(torch.tensor([0.5, 1.0])), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="std must be > 0"):
        D.Normalize(0.0, 0.0)
