"""Small models shared by the adversarial tests: trained once per session, in about a second."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moescope.adversarial import data as D


class Affine(nn.Module):
    """logits = W x + b on flattened inputs: every boundary is a hyperplane."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and never stall on cores shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    return D.load_digits_split(seed=0)


@pytest.fixture(scope="session")
def digits_models(digits):
    """(softmax regression, MLP) on the 8×8 digits; eval mode."""
    mean, std = float(digits.x_train.mean()), float(digits.x_train.std())
    lin = D.softmax_regression((1, 8, 8), 10, mean=mean, std=std, seed=0)
    D.train_classifier(lin, digits.x_train, digits.y_train, epochs=10, lr=1e-2, seed=0)
    net = D.mlp((1, 8, 8), 10, hidden=64, mean=mean, std=std, seed=0)
    D.train_classifier(net, digits.x_train, digits.y_train, epochs=10, lr=3e-3, seed=0)
    return lin, net


@pytest.fixture
def batch(digits):
    """40 test digits (N, 1, 8, 8) in [0, 1] and their labels."""
    return digits.x_test[:40].clone(), digits.y_test[:40].clone()


@pytest.fixture(scope="session")
def affine():
    """A factory: ``affine(d, k, seed)`` is a random affine classifier R^d -> R^k (float64)."""

    def make(d: int, k: int, seed: int, dtype=torch.float64) -> Affine:
        gen = torch.Generator().manual_seed(seed)
        return Affine(torch.randn(k, d, generator=gen, dtype=dtype), torch.randn(k, generator=gen, dtype=dtype))

    return make
