"""Offline data and small models for the attack experiments, trained in seconds on a CPU.

* scikit-learn's bundled handwritten digits (1797 images, 8×8, grey levels 0..16, divided by
  16 into [0, 1]; Alpaydin and Kaynak, UCI 1998), optionally upsampled 8×8 → 16×16 → 32×32
  to raise the input dimension while keeping the task;
* softmax regression and a one-hidden-layer ReLU MLP, with the input normalisation inside the
  model (:class:`Normalize`) so that attacks work on [0, 1] pixels;
* a seeded minibatch Adam trainer.

Everything is seeded and leaves torch's global random state as it found it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Normalize",
    "Split",
    "accuracy",
    "load_digits_split",
    "mlp",
    "seeded",
    "softmax_regression",
    "train_classifier",
    "upsample",
]


@dataclass(frozen=True)
class Split:
    """Images (N, 1, H, W) in [0, 1] and labels (N,), train and test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.x_train[0].numel())

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Split:
        """The same split with ``fn`` applied to both image sets (e.g. :func:`upsample`)."""
        return Split(fn(self.x_train), self.y_train, fn(self.x_test), self.y_test)


def load_digits_split(*, test_size: int = 500, seed: int = 0) -> Split:
    """The digits as float32 images (N, 1, 8, 8) in [0, 1]; a seeded random test split."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    if not 0 < test_size < len(digits.target):
        raise ValueError(f"test_size must lie in [1, {len(digits.target) - 1}]; got test_size={test_size}")
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:test_size], order[test_size:]
    return Split(x[train], y[train], x[test], y[test])


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of images (N, C, H, W) to (N, C, size, size); stays in [0, 1]."""
    if x.ndim != 4:
        raise ValueError(f"x must be images of shape (N, C, H, W); got shape={tuple(x.shape)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer; got size={size!r}")
    if size == x.shape[-1] == x.shape[-2]:
        return x.clone()
    # bilinear weights are convex, so [0, 1] is kept; the clamp only removes rounding
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


class Normalize(nn.Module):
    """``(x - mean) / std`` with scalar statistics: the normalisation lives inside the model."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0; got std={std!r}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global generator seeded, then restore the global state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def softmax_regression(in_shape: Sequence[int], n_classes: int, *, mean: float = 0.0, std: float = 1.0,
                       seed: int = 0) -> nn.Sequential:
    """Multinomial logistic regression: Normalize → Flatten → Linear (an affine classifier)."""
    d = int(np.prod(in_shape))
    with seeded(seed):
        return nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.Linear(d, n_classes))


def mlp(in_shape: Sequence[int], n_classes: int, *, hidden: int = 128, mean: float = 0.0, std: float = 1.0,
        seed: int = 0) -> nn.Sequential:
    """Normalize → Flatten → Linear(d, hidden) → ReLU → Linear(hidden, n_classes)."""
    d = int(np.prod(in_shape))
    with seeded(seed):
        return nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(),
                             nn.Linear(hidden, n_classes))


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Minibatch Adam on the cross-entropy; returns the model in eval mode.

    Seeded: the same seed, data and initial weights give the same weights.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())
