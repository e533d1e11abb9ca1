r"""HypLoRA: low-rank adaptation on the hyperboloid (Yang et al. 2024, "Hyperbolic Fine-tuning for LLMs").

A LoRA adapter adds :math:`\tfrac{\alpha}{r} B A x` to a frozen linear layer's output (Hu et al.
2021). HypLoRA (arXiv:2410.04010, §4 "HypLoRA"; reference code ``marlin-codes/HypLoRA``,
``peft/tuners/lora/layer.py``, ``lora_type == "hyplora"``) computes the same low-rank correction
on the Lorentz model instead, in three steps that this module implements as pure functions:

1. **lift** (the paper's :math:`\Pi_{\mathbb R\to\mathbb L}`, an exponential map at the origin
   :math:`o = (1/\sqrt c, 0)` of the tangent vector (0, u)), :func:`lift`:

   .. math:: x^{\mathbb L} = \Big(\tfrac{\cosh(\sqrt c\,\lVert u\rVert)}{\sqrt c},\
       \tfrac{\sinh(\sqrt c\,\lVert u\rVert)}{\sqrt c\,\lVert u\rVert}\,u\Big),\qquad u = x / s;

2. **direct Lorentz low-rank transformation** (the paper's LLR), :func:`lorentz_low_rank`: the
   low-rank map acts on the *space-like* coordinates of the point, and the time-like coordinate is
   recomputed so that the result lies on the hyperboloid again,

   .. math:: \operatorname{LLR}(BA, x^{\mathbb L}) = \Big(\sqrt{1/c + \lVert BA\,x^{\mathbb L}_s\rVert^2},\
       BA\,x^{\mathbb L}_s\Big);

3. **project back** (:math:`\Pi^{-1}`, the logarithmic map at the origin), :func:`lower`:
   :math:`y \mapsto \tfrac{\operatorname{asinh}(\sqrt c\,\lVert y_s\rVert)}{\sqrt c\,\lVert y_s\rVert}\,y_s`,

and the layer returns :math:`W x + \tfrac{\alpha}{r}\, s\,\Pi^{-1}(\operatorname{LLR}(BA, \Pi(x/s)))`
(:func:`hyplora_update`). This is not the exp/log round trip the paper warns about: with
:math:`\log_o(\exp_o(BAx)) = BAx` a tangent-space adapter collapses to LoRA, whereas here BA acts
between the two maps, on manifold coordinates, so the correction is the radial reshaping
:math:`r \mapsto \operatorname{asinh}(\lVert BA\hat u\rVert \sinh r)` of LoRA's — equal to LoRA's to
first order near the origin and logarithmically compressed far out (where a tree's leaves live).

Choices, named: c (the paper's 1/K) and the input scale s are fixed hyperparameters here, where
the reference code also learns K and s (two scalars per layer); fixing them keeps the trainable
parameter count *exactly* that of LoRA at equal rank. s defaults to √(in_features), the
reference's initial value, and the output is multiplied back by s so that HypLoRA → LoRA as
c → 0 (the reference leaves it divided, which only rescales B's learning rate). Tangent norms are
clipped at ``max_radius``/√c before the lift so cosh/sinh stay finite in float32 (the reference
clamps at 12). Why :func:`lift` and :func:`lower` are written here rather than calling
:func:`~moescope.geometry.curved.lorentz.expmap` / :func:`~moescope.geometry.curved.lorentz.logmap`
at the origin (the tests check they agree in value): B starts at zero, so at initialisation every
adapted point sits *exactly* at the origin, where the general log map's gradient (a distance times
a unit direction) is zero — B would never move. The closed forms at the origin have the correct
Jacobian (the identity) there.

The Euclidean twin is :class:`LoRALinear` (peft's LoRA, checked against ``peft`` in the tests):
same A, B shapes and initialisation (A Kaiming-uniform, B zero), so at initialisation both wrapped
models equal the base model and their trainable parameter counts are equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moescope.geometry.curved import lorentz
from moescope.geometry.curved._numerics import as_curvature, csqrt

__all__ = [
    "HypLoRAConfig",
    "HypLoRALinear",
    "LoRALinear",
    "adapter_parameter_count",
    "apply_hyplora",
    "apply_lora",
    "hyplora_update",
    "lift",
    "lorentz_low_rank",
    "lower",
    "target_linears",
    "trainable_parameter_count",
]

_SERIES = 1e-4   # below this |z|, sinh(z)/z and asinh(z)/z use their Taylor series (error < z⁴/120 ≈ 1e-18)


def _sinhc(z: Tensor) -> Tensor:
    """sinh(z)/z, smooth through 0 (1 + z²/6 there)."""
    small = z.abs() < _SERIES
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1.0 + z * z / 6.0, torch.sinh(safe) / safe)


def _asinhc(z: Tensor) -> Tensor:
    """asinh(z)/z, smooth through 0 (1 − z²/6 there)."""
    small = z.abs() < _SERIES
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1.0 - z * z / 6.0, torch.asinh(safe) / safe)


def _norm(x: Tensor) -> Tensor:
    """‖x‖ over the last axis (keepdim) with a zero gradient at 0 instead of NaN."""
    sq = x.square().sum(-1, keepdim=True)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, 1.0).sqrt(), 0.0)


def lift(u: Tensor, *, c: object = 1.0, max_radius: float | None = None) -> Tensor:
    r"""Euclidean vectors (..., n) → points of the hyperboloid (..., n + 1): :math:`\exp_o((0, u))`.

    :math:`(\cosh(\sqrt c\lVert u\rVert)/\sqrt c,\ \operatorname{sinhc}(\sqrt c\lVert u\rVert)\,u)`.
    ``max_radius``: clip ‖u‖ at ``max_radius``/√c first (a geodesic distance from the origin).
    """
    cc = as_curvature(c, like=u)
    sc = csqrt(cc)
    r = _norm(u)
    if max_radius is not None:
        cap = max_radius / sc
        u = u * torch.where(r > cap, cap / torch.where(r > cap, r, 1.0), 1.0)
        r = torch.clamp(r, max=cap) if isinstance(cap, float) else torch.minimum(r, cap)
    space = _sinhc(sc * r) * u
    return torch.cat([torch.cosh(sc * r) / sc, space], dim=-1)


def lower(x: Tensor, *, c: object = 1.0) -> Tensor:
    r"""Points of the hyperboloid (..., n + 1) → Euclidean vectors (..., n): the space part of :math:`\log_o x`.

    :math:`\operatorname{asinhc}(\sqrt c\lVert x_s\rVert)\,x_s`; only the space part is read
    (on the sheet, :math:`\operatorname{arcosh}(\sqrt c x_0) = \operatorname{asinh}(\sqrt c\lVert x_s\rVert)`).
    """
    cc = as_curvature(c, like=x)
    sc = csqrt(cc)
    xs = x[..., 1:]
    return _asinhc(sc * _norm(xs)) * xs


def lorentz_low_rank(x: Tensor, a: Tensor, b: Tensor, *, c: object = 1.0) -> Tensor:
    r"""HypLoRA's LLR: :math:`(\sqrt{1/c + \lVert BAx_s\rVert^2},\ BAx_s)`, (..., n + 1) → (..., m + 1).

    Args:
        x: (..., n + 1) points of the hyperboloid of curvature −c (time first).
        a: (r, n) the down-projection A; b: (m, r) the up-projection B.
    The time coordinate is recomputed by :func:`~moescope.geometry.curved.lorentz.project`.
    """
    space = x[..., 1:] @ a.T @ b.T                                                 # (..., m)
    return lorentz.project(torch.cat([space[..., :1], space], dim=-1), c=c)


def hyplora_update(x: Tensor, a: Tensor, b: Tensor, *, c: object = 1.0, scale: float = 1.0,
                   max_radius: float | None = None) -> Tensor:
    r"""HypLoRA's correction (..., n) → (..., m): :math:`s\,\Pi^{-1}(\operatorname{LLR}(BA, \Pi(x/s)))`.

    Without the α/r factor (the layer applies it). As c → 0 it tends to LoRA's :math:`BAx`.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got scale={scale!r}")
    point = lift(x / scale, c=c, max_radius=max_radius)                             # (..., n + 1)
    return scale * lower(lorentz_low_rank(point, a, b, c=c), c=c)                   # (..., m)


@dataclass(frozen=True)
class HypLoRAConfig:
    """Which layers get an adapter and how (shared by HypLoRA and its LoRA twin)."""

    rank: int = 4                   # r: a tiny model's attention has d = 32-128, so r = 4 is d/8-d/32
    alpha: float = 8.0              # scaling α/r = 2 (peft's default α = 8)
    curvature: float = 1.0          # c, the hyperboloid has curvature −c; the reference initialises K = 1/c = 1
    input_scale: float | None = None  # s: inputs are lifted as x/s; None → √(in_features), the reference's init
    max_radius: float = 12.0        # clip of √c‖x/s‖ before the lift (the reference's clamp): cosh(12) fits float32
    target_modules: tuple[str, ...] = ("c_attn", "c_proj")  # peft-style name suffixes; the lab LM's attention

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer; got rank={self.rank!r}")
        for name in ("alpha", "curvature", "max_radius"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number; got {name}={v!r}")
        if self.input_scale is not None and (isinstance(self.input_scale, bool) or not
                                             isinstance(self.input_scale, (int, float)) or
                                             not (math.isfinite(self.input_scale) and self.input_scale > 0)):
            raise ValueError(f"input_scale must be None (√in_features) or a positive number; got {self.input_scale!r}")
        if isinstance(self.target_modules, str) or not self.target_modules or \
                not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError("target_modules must be a non-empty tuple of module-name suffixes such as "
                             f"('c_attn', 'c_proj'); got {self.target_modules!r}")

    @property
    def scaling(self) -> float:
        """α/r, the factor on the adapter's output (LoRA's)."""
        return self.alpha / self.rank


def _init_low_rank(a: nn.Linear, b: nn.Linear, generator: torch.Generator | None) -> None:
    """peft's default LoRA init: A Kaiming-uniform (a = √5, nn.Linear's), B zero: the adapter starts at 0."""
    nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5), generator=generator)
    nn.init.zeros_(b.weight)


class LoRALinear(nn.Module):
    """The Euclidean twin: ``base(x) + α/r · B A x`` with ``base`` frozen (Hu et al. 2021; peft's ``lora.Linear``).

    Shapes: x (..., in_features) → (..., out_features); ``lora_A.weight`` (r, in), ``lora_B.weight`` (out, r).
    """

    def __init__(self, base: nn.Linear, cfg: HypLoRAConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base_layer, self.scaling = base, cfg.scaling
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, cfg.rank, bias=False, **kw)
        self.lora_B = nn.Linear(cfg.rank, base.out_features, bias=False, **kw)
        _init_low_rank(self.lora_A, self.lora_B, generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(x))


class HypLoRALinear(nn.Module):
    """``base(x) + α/r · hyplora_update(x, A, B)`` with ``base`` frozen (see the module docstring).

    Shapes: x (..., in_features) → (..., out_features); ``lora_A.weight`` (r, in), ``lora_B.weight``
    (out, r), the same parameters as :class:`LoRALinear`. The correction is computed in float32 at
    least (the reference turns autocast off for it).
    """

    def __init__(self, base: nn.Linear, cfg: HypLoRAConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base_layer, self.scaling = base, cfg.scaling
        self.curvature, self.max_radius = float(cfg.curvature), float(cfg.max_radius)
        self.input_scale = float(cfg.input_scale if cfg.input_scale is not None else math.sqrt(base.in_features))
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, cfg.rank, bias=False, **kw)
        self.lora_B = nn.Linear(cfg.rank, base.out_features, bias=False, **kw)
        _init_low_rank(self.lora_A, self.lora_B, generator)

    def forward(self, x: Tensor) -> Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        delta = hyplora_update(x.to(work), self.lora_A.weight.to(work), self.lora_B.weight.to(work),
                               c=self.curvature, scale=self.input_scale, max_radius=self.max_radius)
        return self.base_layer(x) + (self.scaling * delta).to(x.dtype)

    def extra_repr(self) -> str:
        return f"c={self.curvature}, input_scale={self.input_scale:.4g}, scaling={self.scaling:.4g}"


def target_linears(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` modules whose qualified name equals a target or ends with ``.<target>`` (peft's rule)."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    if not found:
        linears = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear module matches target_modules={targets!r}; the model's Linear names "
                         f"end in {linears}")
    return found


def _wrap(model: nn.Module, cfg: HypLoRAConfig, make: Callable[..., nn.Module],
          generator: torch.Generator | None) -> list[str]:
    """Freeze ``model`` and replace every target Linear by ``make(linear, cfg, generator=...)`` in place."""
    chosen = target_linears(model, cfg.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(linear, cfg, generator=generator))
    return [name for name, _ in chosen]


def apply_hyplora(model: nn.Module, cfg: HypLoRAConfig | None = None, *,
                  generator: torch.Generator | None = None) -> list[str]:
    """Freeze ``model`` and wrap its target ``nn.Linear`` layers in :class:`HypLoRALinear`, in place.

    Returns the wrapped modules' names. ``generator`` draws A (the same draws as :func:`apply_lora`
    with an equally seeded generator, so a paired comparison starts both adapters from the same A).
    """
    return _wrap(model, cfg or HypLoRAConfig(), HypLoRALinear, generator)


def apply_lora(model: nn.Module, cfg: HypLoRAConfig | None = None, *,
               generator: torch.Generator | None = None) -> list[str]:
    """The Euclidean twin: the same layers wrapped in :class:`LoRALinear` (equal rank, equal parameter count)."""
    return _wrap(model, cfg or HypLoRAConfig(), LoRALinear, generator)


def adapter_parameter_count(model: nn.Module, cfg: HypLoRAConfig) -> int:
    """Trainable parameters either adapter adds to ``model``: Σ r·(in + out) over the target layers."""
    return sum(cfg.rank * (m.in_features + m.out_features) for _, m in target_linears(model, cfg.target_modules))


def trainable_parameter_count(model: nn.Module) -> int:
    """Parameters with ``requires_grad`` (after wrapping: the adapters' A and B only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
