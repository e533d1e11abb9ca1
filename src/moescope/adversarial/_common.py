"""What every attack shares: input checks, the model call, eval mode, the loss.

Conventions (those of torchattacks, Foolbox and CleverHans):

* inputs ``x`` of shape (N, ...) live in the box ``clip = (low, high)`` ((0, 1) for images);
  a normalisation belongs inside the model, or is passed as ``preprocessing=(mean, std)`` and
  applied as ``(x - mean) / std`` before every call (Foolbox's ``preprocessing``);
* ``y=None`` means "attack the model's own predictions";
* the model is put in eval mode for the attack and every submodule's mode is restored after;
* the caller's tensors are never modified in place, and no parameter gradient is written;
* the model must return logits of shape (N, K); outputs that look like probabilities warn.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

Clip = tuple[float, float] | None
Preprocessing = tuple[object, object] | None

_NORMS = {"linf": "linf", "inf": "linf", "l_inf": "linf", math.inf: "linf", "l2": "l2", "2": "l2", 2: "l2"}


def check_eps(eps: object, *, name: str = "eps") -> float:
    """A finite real number >= 0 (a perturbation budget or a step size)."""
    scalar = isinstance(eps, numbers.Real) or (isinstance(eps, torch.Tensor) and eps.ndim == 0)
    if isinstance(eps, bool) or not scalar:
        raise TypeError(f"{name} must be a real number >= 0; got {eps!r}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite real number >= 0; got {name}={eps!r}")
    return value


def check_steps(steps: object, *, name: str = "steps", minimum: int = 0) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"{name} must be an integer >= {minimum}; got {steps!r}")
    if steps < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={steps!r}")
    return steps


def check_norm(norm: object) -> str:
    """'linf' or 'l2' (aliases: 'inf', math.inf, 2, '2'); anything else is a ValueError."""
    key = norm.lower() if isinstance(norm, str) else norm
    try:
        return _NORMS[key]
    except (KeyError, TypeError):
        raise ValueError(f"norm must be 'linf' or 'l2'; got norm={norm!r}") from None


def check_clip(clip: object) -> Clip:
    """None (unbounded inputs) or a pair (low, high) of finite reals with low < high."""
    if clip is None:
        return None
    if not isinstance(clip, Sequence) or len(clip) != 2:
        raise TypeError(f"clip must be None or a pair (low, high); got clip={clip!r}")
    low, high = float(clip[0]), float(clip[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"clip must be finite (low, high) with low < high; got clip={clip!r}")
    return low, high


def check_inputs(x: object, y: object, clip: Clip) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate a batch ``x`` (N, ...) of floats within ``clip`` and labels ``y`` (N,) or None."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, ...); got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; got dtype={x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must have a batch dimension, shape (N, ...); got shape={tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite; it contains NaN or inf")
    if clip is not None and x.numel() and (float(x.min()) < clip[0] or float(x.max()) > clip[1]):
        raise ValueError(
            f"x must lie within clip={clip}; got values in [{float(x.min()):g}, {float(x.max()):g}] "
            "(put any normalisation inside the model or pass preprocessing=(mean, std))"
        )
    if y is None:
        return x, None
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be None or an integer torch.Tensor of shape (N,); got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels; got dtype={y.dtype}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape (N,) = {tuple(x.shape[:1])}; got shape={tuple(y.shape)}")
    return x, y.to(device=x.device, dtype=torch.long)


def _as_stat(value: object, x: torch.Tensor, name: str) -> torch.Tensor:
    """mean/std as a tensor that broadcasts against x: a scalar, one value per channel, or full."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.ndim == 1 and x.ndim >= 3 and t.numel() == x.shape[1] and t.numel() > 1:
        return t.reshape(1, -1, *([1] * (x.ndim - 2)))  # per channel, as torchattacks: (1, C, 1, 1)
    try:
        torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"preprocessing {name} of shape {tuple(t.shape)} does not broadcast against x of shape "
            f"{tuple(x.shape)}; give a scalar, one value per channel, or a broadcastable tensor"
        ) from None
    return t


class Classifier:
    """The attacked function ``x -> logits``: preprocessing, then the model, then output checks.

    Args:
        model: returns logits (N, K).
        preprocessing: ``(mean, std)`` applied as ``(x - mean) / std`` before the model.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing = None):
        if not callable(model):
            raise TypeError(f"model must be a callable torch.nn.Module; got {type(model).__name__}")
        if preprocessing is not None and (not isinstance(preprocessing, Sequence) or len(preprocessing) != 2):
            raise TypeError(f"preprocessing must be None or a pair (mean, std); got {preprocessing!r}")
        self.model = model
        self.preprocessing = preprocessing
        self._checked = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocessing is not None:
            mean = _as_stat(self.preprocessing[0], x, "mean")
            std = _as_stat(self.preprocessing[1], x, "std")
            if bool((std <= 0).any()):
                raise ValueError(f"preprocessing std must be > 0; got std={self.preprocessing[1]!r}")
            x = (x - mean) / std
        logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"the model must return logits of shape (N, K) = ({x.shape[0]}, K); got {shape}")
        if not self._checked:
            self._checked = True
            _warn_if_probabilities(logits)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # cross-entropy and softmax in float32
        return logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(dim=1)


def _warn_if_probabilities(logits: torch.Tensor) -> None:
    """Warn when every row is non-negative and sums to 1: the attacks need logits, not softmax."""
    if logits.shape[1] < 2 or logits.numel() == 0:
        return
    with torch.no_grad():
        z = logits.detach().double()
        if bool((z >= 0).all()) and bool(((z.sum(1) - 1).abs() < 1e-4).all()):
            warnings.warn(
                "the model's outputs are non-negative and sum to 1 in every row: they look like "
                "probabilities, but attacks expect logits (drop the final softmax)",
                UserWarning,
                stacklevel=4,
            )


@contextmanager
def eval_mode(model: object) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own ``training`` flag afterwards."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def labels_or_predictions(f: Classifier, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``y``, or the model's predictions where ``y`` is None (Foolbox and torchattacks both do this)."""
    return f.predict(x) if y is None else y


def loss_gradient(f: Classifier, x: torch.Tensor, y: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    r"""∇ₓ of the attack objective at x, without touching x or any parameter's ``.grad``.

    Untargeted: the cross-entropy of the true class, to be increased; targeted: its negative
    for the target class (torchattacks: ``cost = -loss(outputs, target_labels)``). The loss is
    summed over the batch, so each sample's gradient is its own loss's gradient whatever the
    batch (torchattacks takes the mean: the same signs, and directions equal up to rounding).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(f(x), y, reduction="sum")
        if targeted:
            loss = -loss
        (grad,) = torch.autograd.grad(loss, x)
    return grad.detach()


def flat_norm(v: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Per-sample norm over all but the batch dimension: (N, ...) -> (N,)."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), ord=p, dim=1)


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1) so that it broadcasts against ``like`` (N, ...)."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def clamp(x: torch.Tensor, clip: Clip) -> torch.Tensor:
    return x if clip is None else x.clamp(clip[0], clip[1])
