r"""Gradient attacks: FGSM / FGM and PGD (L∞ and L2), in function and object style.

FGSM (Goodfellow et al., *Explaining and Harnessing Adversarial Examples*, ICLR 2015, eq. 3):

.. math:: x_{adv} = \mathrm{clip}\big(x + \varepsilon \, \mathrm{sign}(\nabla_x L(f(x), y))\big)

FGM is the same step in L2: :math:`x + \varepsilon\, g / \lVert g \rVert_2`. PGD (Madry et al.,
*Towards Deep Learning Models Resistant to Adversarial Attacks*, ICLR 2018) iterates the step
with size α and projects back onto the ε-ball and the box after each one, from a random start.
The updates, defaults and random starts follow torchattacks 3.5 (``FGSM``, ``PGD``,
``PGDL2``) line for line; ``tests/adversarial/test_attacks.py`` checks equality against it.

Function style ``fgsm(model, x, y, eps=8/255)``; object style ``FGSM(model, eps=8/255)(x, y)``.
Conventions (bounds, ``y=None``, eval mode, logits) are those of :mod:`._common`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from moescope.adversarial._common import (
    Classifier,
    Clip,
    Preprocessing,
    check_clip,
    check_eps,
    check_inputs,
    check_norm,
    check_steps,
    clamp,
    eval_mode,
    flat_norm,
    labels_or_predictions,
    loss_gradient,
    per_sample,
)

__all__ = [
    "DEFAULTS",
    "FGM",
    "FGSM",
    "PGD",
    "PGDL2",
    "AttackSummary",
    "evaluate_attack",
    "fgm",
    "fgsm",
    "pgd",
    "random_noise",
]

# torchattacks' defaults: eps = 8/255, alpha = 2/255 for L∞ (one grey level of 8-bit images is
# 1/255); eps = 1.0, alpha = 0.2 for L2 (PGDL2). Both take 10 steps.
DEFAULTS = {"linf": {"eps": 8 / 255, "alpha": 2 / 255}, "l2": {"eps": 1.0, "alpha": 0.2}}
STEPS = 10
# torchattacks' PGDL2 ``eps_for_division``: keeps g / ||g|| finite where the gradient vanishes.
EPS_DIV = 1e-10


def _l2_unit(g: torch.Tensor) -> torch.Tensor:
    """g / (||g||₂ + 1e-10) per sample, as torchattacks' PGDL2."""
    return g / per_sample(flat_norm(g) + EPS_DIV, g)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Onto the ε-ball: clamp for L∞; scale by min(1, ε/||δ||₂) for L2."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = flat_norm(delta)
    factor = (eps / norms.clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)
    return delta * per_sample(factor, delta)


def _prepare(model, x, y, *, clip, preprocessing, targeted):
    clip = check_clip(clip)
    x, y = check_inputs(x, y, clip)
    f = Classifier(model, preprocessing)
    if targeted and y is None:
        raise ValueError("targeted=True needs the target classes: pass y (N,) of target labels")
    return f, x, y, clip


def fgm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float | None = None,
    norm: str = "l2",
    targeted: bool = False,
    clip: Clip = (0.0, 1.0),
    preprocessing: Preprocessing = None,
) -> torch.Tensor:
    r"""Fast gradient method: one step of size ε along the gradient's sign (L∞) or direction (L2).

    ``x_adv = clip(x + ε·sign(∇ₓL))`` for ``norm="linf"`` (FGSM); ``clip(x + ε·∇ₓL/‖∇ₓL‖₂)``
    for ``norm="l2"``. Targeted attacks (``y`` = target classes) step down the target's loss.

    Args:
        model: returns logits (N, K).
        x: inputs (N, ...) within ``clip``.
        y: true labels (N,) — or the targets when ``targeted`` — or None for the predictions.
        eps: step size; defaults to 8/255 (L∞) or 1.0 (L2), as torchattacks.
        clip: input bounds, or None for unbounded inputs.
        preprocessing: ``(mean, std)`` applied inside, as ``(x - mean) / std``.

    Returns:
        x_adv (N, ...), detached, within ``clip`` and within ε of x in the chosen norm.
    """
    norm = check_norm(norm)
    eps = check_eps(DEFAULTS[norm]["eps"] if eps is None else eps)
    f, x, y, clip = _prepare(model, x, y, clip=clip, preprocessing=preprocessing, targeted=targeted)
    with eval_mode(model):
        y = labels_or_predictions(f, x, y)
        grad = loss_gradient(f, x, y, targeted=targeted)
    step = grad.sign() if norm == "linf" else _l2_unit(grad)
    return clamp(x.detach() + eps * step, clip).detach()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float = DEFAULTS["linf"]["eps"],
    targeted: bool = False,
    clip: Clip = (0.0, 1.0),
    preprocessing: Preprocessing = None,
) -> torch.Tensor:
    """FGSM, exactly ``clip(x + ε·sign(∇ₓ loss))`` (Goodfellow et al. 2015, eq. 3); see :func:`fgm`."""
    return fgm(model, x, y, eps=eps, norm="linf", targeted=targeted, clip=clip, preprocessing=preprocessing)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int = STEPS,
    norm: str = "linf",
    random_start: bool = True,
    targeted: bool = False,
    clip: Clip = (0.0, 1.0),
    preprocessing: Preprocessing = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Projected gradient descent (Madry et al. 2018) in L∞ or L2, as torchattacks' PGD / PGDL2.

    Random start: L∞ adds U(−ε, ε) per coordinate; L2 adds a Gaussian direction scaled to
    radius r·ε with r ~ U(0, 1) (torchattacks' choice, not uniform in the ball); then clip.
    Each step: ``x ← x + α·sign(g)`` (L∞) or ``x + α·g/(‖g‖₂ + 1e-10)`` (L2), then
    ``δ ← Π_ε(x − x₀)``, ``x ← clip(x₀ + δ)``.

    Args:
        eps, alpha: radius and step; default 8/255 and 2/255 (L∞) or 1.0 and 0.2 (L2).
        steps: number of gradient steps (10).
        random_start: start from a random point of the ε-ball (on by default).
        generator: seeds the random start; None draws from torch's global generator
            (exactly as torchattacks does, so the same ``torch.manual_seed`` gives the same start).
        others: as :func:`fgm`.

    Returns:
        x_adv (N, ...), detached, within ``clip`` and within ε of x.
    """
    norm = check_norm(norm)
    eps = check_eps(DEFAULTS[norm]["eps"] if eps is None else eps)
    alpha = check_eps(DEFAULTS[norm]["alpha"] if alpha is None else alpha, name="alpha")
    steps = check_steps(steps)
    f, x, y, clip = _prepare(model, x, y, clip=clip, preprocessing=preprocessing, targeted=targeted)
    x0 = x.detach()
    with eval_mode(model):
        y = labels_or_predictions(f, x0, y)
        adv = x0.clone()
        if random_start:
            if norm == "linf":
                adv = adv + torch.empty_like(adv).uniform_(-eps, eps, generator=generator)
            else:
                delta = torch.empty_like(adv).normal_(generator=generator)
                n = per_sample(flat_norm(delta), adv)
                r = torch.zeros_like(n).uniform_(0, 1, generator=generator)
                adv = adv + delta * (r / n * eps)  # torchattacks: delta *= r / n * eps
            adv = clamp(adv, clip)
        for _ in range(steps):
            grad = loss_gradient(f, adv, y, targeted=targeted)
            adv = adv + alpha * (grad.sign() if norm == "linf" else _l2_unit(grad))
            adv = clamp(x0 + _project(adv - x0, eps, norm), clip)
    return adv.detach()


def random_noise(
    x: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    clip: Clip = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The baseline: random noise of the same size, ε·(random signs) for L∞ or ε·(uniform unit
    direction) for L2, then clipped. A random direction is almost orthogonal to the gradient."""
    norm = check_norm(norm)
    eps = check_eps(eps)
    clip = check_clip(clip)
    x, _ = check_inputs(x, None, clip)
    if norm == "linf":
        step = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    else:
        step = _l2_unit(torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device))
    return clamp(x.detach() + eps * step, clip)


@dataclass(frozen=True)
class AttackSummary:
    """How an attack did. ``success_rate`` counts only points the model got right before the
    attack (Foolbox's convention); ``robust_accuracy`` is over all points."""

    n: int
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float        # among clean-correct points, share whose prediction flipped
    n_clean_correct: int
    mean_linf: float           # mean ||x_adv - x||_inf over all points
    mean_l2: float             # mean ||x_adv - x||_2 over all points

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    preprocessing: Preprocessing = None,
) -> AttackSummary:
    """Clean and robust accuracy, success on clean-correct points, and perturbation sizes."""
    x, y = check_inputs(x, y, None)
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x, {tuple(x.shape)}; got {getattr(x_adv, 'shape', x_adv)}")
    f = Classifier(model, preprocessing)
    with eval_mode(model):
        clean = f.predict(x) == y
        robust = f.predict(x_adv) == y
    n, n_ok = int(y.numel()), int(clean.sum())
    delta = x_adv - x
    return AttackSummary(
        n=n,
        clean_accuracy=n_ok / n,
        robust_accuracy=float(robust.float().mean()),
        success_rate=float((clean & ~robust).sum()) / n_ok if n_ok else 0.0,
        n_clean_correct=n_ok,
        mean_linf=float(flat_norm(delta, float("inf")).mean()),
        mean_l2=float(flat_norm(delta).mean()),
    )


class _Attack:
    """Object style: hold the model and settings, attack on call. Composes the function."""

    _fields: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields)
        return f"{type(self).__name__}({args})"


class FGM(_Attack):
    """``FGM(model, eps=1.0, norm="l2")(x, y)``; see :func:`fgm`."""

    _fields = ("eps", "norm", "targeted", "clip", "preprocessing")

    def __init__(self, model, eps=None, *, norm="l2", targeted=False, clip=(0.0, 1.0), preprocessing=None):
        super().__init__(model)
        self.norm = check_norm(norm)
        self.eps = check_eps(DEFAULTS[self.norm]["eps"] if eps is None else eps)
        self.targeted, self.clip, self.preprocessing = targeted, check_clip(clip), preprocessing

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return fgm(self.model, x, y, eps=self.eps, norm=self.norm, targeted=self.targeted,
                   clip=self.clip, preprocessing=self.preprocessing)


class FGSM(FGM):
    """``FGSM(model, eps=8/255)(x, y)``, as ``torchattacks.FGSM``; see :func:`fgsm`."""

    _fields = ("eps", "targeted", "clip", "preprocessing")

    def __init__(self, model, eps=DEFAULTS["linf"]["eps"], *, targeted=False, clip=(0.0, 1.0), preprocessing=None):
        super().__init__(model, eps, norm="linf", targeted=targeted, clip=clip, preprocessing=preprocessing)


class PGD(_Attack):
    """``PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)(x, y)``, as torchattacks.

    ``norm="l2"`` gives :class:`PGDL2`; see :func:`pgd`.
    """

    _fields = ("eps", "alpha", "steps", "random_start", "norm", "targeted", "clip", "preprocessing")

    def __init__(self, model, eps=None, alpha=None, steps=STEPS, random_start=True, *, norm="linf",
                 targeted=False, clip=(0.0, 1.0), preprocessing=None, generator=None):
        super().__init__(model)
        self.norm = check_norm(norm)
        self.eps = check_eps(DEFAULTS[self.norm]["eps"] if eps is None else eps)
        self.alpha = check_eps(DEFAULTS[self.norm]["alpha"] if alpha is None else alpha, name="alpha")
        self.steps = check_steps(steps)
        self.random_start, self.targeted = bool(random_start), targeted
        self.clip, self.preprocessing, self.generator = check_clip(clip), preprocessing, generator

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return pgd(self.model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                   random_start=self.random_start, targeted=self.targeted, clip=self.clip,
                   preprocessing=self.preprocessing, generator=self.generator)


class PGDL2(PGD):
    """``PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=True)(x, y)``, as torchattacks."""

    _fields = ("eps", "alpha", "steps", "random_start", "targeted", "clip", "preprocessing")

    def __init__(self, model, eps=DEFAULTS["l2"]["eps"], alpha=DEFAULTS["l2"]["alpha"], steps=STEPS,
                 random_start=True, **kwargs):
        if "norm" in kwargs:
            raise TypeError("PGDL2 is PGD with norm='l2'; use PGD(..., norm=...) to choose the norm")
        super().__init__(model, eps, alpha, steps, random_start, norm="l2", **kwargs)
