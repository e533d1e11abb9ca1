r"""A hyperbolic vision transformer in the Poincaré ball (after Fein-Ashley et al. 2024, "HVT"), and its twin.

Fein-Ashley, Feng & Pham (2024, "HVT: A Comprehensive Vision Framework for Learning in Non-Euclidean
Space") move a ViT's token mixing into hyperbolic space: Möbius linear layers, attention scored by
hyperbolic distances, Riemannian Adam. This is that idea at the scale of scikit-learn's 8×8 digits:

* **patches** — an (8, 8) image becomes 16 tokens of 2×2 = 4 pixels (:func:`patchify`), lifted to the
  ball by :math:`\exp^c_0` and embedded by a Möbius linear layer :math:`(W \otimes_c x_i) \oplus_c b_i`
  whose bias :math:`b_i`, a point of the ball, is learned per position i: the position embedding
  (the twin: :math:`W x_i + b_i`);
* **attention** — per head, queries, keys and values are Möbius matvecs into a ball of their own
  (:func:`~moescope.geometry.curved.poincare_layers.mobius_matvec_heads`; no bias, in both models, which
  saves three Möbius additions per block); the weights are
  :math:`\alpha_{ij} = \operatorname{softmax}_j(-\beta\, d_c(q_i, k_j) - \gamma)` (Gulcehre et al. 2019,
  "Hyperbolic Attention Networks", eq. 3), with a learned :math:`\beta = e^{s} > 0` per head. A softmax
  is unchanged by a shift common to a row, so the constant γ cancels and is not a parameter;
* **aggregation** — the **Einstein midpoint** of the values in the Klein model, weighted by α
  (:func:`~moescope.geometry.curved.poincare_layers.einstein_midpoint`); the heads are joined in the
  tangent space at the origin and mapped by a Möbius linear output layer;
* **MLP** — Möbius linear, GELU in the tangent space at the origin
  (:math:`x \mapsto \exp^c_0(\operatorname{GELU}(\log^c_0 x))`), Möbius linear;
* **residuals** — :math:`h \leftarrow h \oplus_c \operatorname{attn}(h)`, then
  :math:`h \leftarrow h \oplus_c \operatorname{mlp}(h)`, each followed by
  :func:`~moescope.geometry.curved.poincare.project` (the float32 ball margin of ``_numerics``);
* **head** — the Einstein midpoint of the 16 tokens, classified by hyperbolic multinomial logistic
  regression (Ganea et al. 2018, eq. 25) with one point :math:`p_k` and one normal :math:`a_k` per class;
* **clipping** — every Möbius layer clips its tangent vector :math:`W\log_0 x` to norm ``clip`` before
  :math:`\exp^c_0` (feature clipping, Guo et al. 2022), so each layer's output lies within 2·clip of the
  origin and the tokens stay far inside the radius float32 can resolve (17.3 for c = 1). Without it,
  training drives tokens onto the projection margin, where the radial direction is lost. The twin has no
  boundary and needs no such guard; clipping has no parameters.

No layer norm, in either model: at two blocks the models train without it, and a norm in the ball
would need its own definition. The points of the ball (biases, position points, class points
:math:`p_k`) are listed by :meth:`HyperbolicViT.ball_parameters` and moved by
:class:`~moescope.geometry.curved.optim.RiemannianAdam` along geodesics (:func:`optimizer`).

The **Euclidean twin** (:class:`EuclideanViT`) is the same network with the geometry removed: linear
layers, scaled dot-product attention with a learned temperature :math:`e^{s}` per head, the plain
mean, GELU, residual sums, and the c → 0 limit of the hyperbolic MLR, :math:`4\langle x - p_k, a_k\rangle`
(a linear classifier). Every parameter has the same name and size in both, so the counts are equal by
construction (:func:`count_parameters`), and :func:`build` gives both the same initial weights for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from moescope.geometry.curved.optim import RiemannianAdam
from moescope.geometry.curved.poincare import PoincareBall, dist0, expmap0, logmap0, mobius_add, project
from moescope.geometry.curved.poincare_layers import (
    clip_features,
    einstein_midpoint,
    mlr_logits,
    mobius_linear,
    mobius_matvec_heads,
    pairwise_dist,
    transp0,
)

__all__ = [
    "EuclideanViT",
    "HVTConfig",
    "HyperbolicViT",
    "accuracy",
    "build",
    "count_parameters",
    "euclidean_twin",
    "fit",
    "optimizer",
    "patchify",
    "predict",
    "token_radii",
]

GEOMETRIES = ("hyperbolic", "euclidean")
POS_STD = 0.02


@dataclass(frozen=True)
class HVTConfig:
    """Sizes of both ViTs (the hyperbolic one and its twin)."""

    image_size: int = 8      # scikit-learn's digits are 8×8
    patch_size: int = 2      # 16 tokens of 4 pixels: enough tokens for attention to have something to mix
    dim: int = 16            # token width; ≈ 5k parameters in all, trained in seconds on 2 CPU cores
    depth: int = 2           # two blocks: token mixing happens twice, and no layer norm is needed
    heads: int = 2           # each head attends in its own 8-dimensional ball
    mlp_dim: int = 32        # the usual 2× expansion
    n_classes: int = 10      # the ten digits
    c: float = 1.0           # curvature −c of the ball (the unit ball)
    clip: float | None = 1.0  # feature clipping (Guo et al. 2022): layer outputs within 2 of 0, far from float32's edge

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "n_classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {name}={v!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size must divide image_size={self.image_size}; got patch_size={self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"heads must divide dim={self.dim}; got heads={self.heads}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be at least 2; got n_classes={self.n_classes}")
        if isinstance(self.c, bool) or not isinstance(self.c, (int, float)) or not (math.isfinite(self.c)
                                                                                  and self.c > 0):
            raise ValueError(f"c is the magnitude of the ball's curvature −c and must be a positive finite number; "
                             f"got c={self.c!r}")
        if self.clip is not None and (isinstance(self.clip, bool) or not isinstance(self.clip, (int, float))
                                      or not (math.isfinite(self.clip) and self.clip > 0)):
            raise ValueError(f"clip is a tangent-norm radius and must be a positive finite number or None; "
                             f"got clip={self.clip!r}")

    @property
    def n_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size ** 2


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, H, W) images → (B, H/p · W/p, p²) patch tokens, row-major over patches and pixels."""
    if images.ndim != 3 or images.shape[1] % patch_size or images.shape[2] % patch_size:
        raise ValueError(f"images must be (B, H, W) with H and W divisible by patch_size={patch_size}; "
                         f"got shape {tuple(images.shape)}")
    b, h, w = images.shape
    x = images.reshape(b, h // patch_size, patch_size, w // patch_size, patch_size)   # (B, h', p, w', p)
    return x.permute(0, 1, 3, 2, 4).reshape(b, -1, patch_size * patch_size)          # (B, h'w', p²)


# ---------------------------------------------------------------- hyperbolic layers


class MobiusLinear(nn.Module):
    r""":math:`x \mapsto (W \otimes_c x) \oplus_c b`; with ``heads``, one ball per head; ``bias=False``: no b.

    With ``clip`` = r, the tangent vector :math:`W\log^c_0 x` (per head) is clipped to norm r before
    :math:`\exp^c_0` (:func:`~moescope.geometry.curved.poincare_layers.clip_features`), so
    :math:`W \otimes_c x` lies within 2r of the origin; with ``clip=None`` the layer is exactly
    :func:`~moescope.geometry.curved.poincare_layers.mobius_linear` (or ``mobius_matvec_heads``).

    ``forward``: (..., d_in) points → (..., d_out) points, or (..., heads, d_out/heads) with ``heads``.
    ``forward_tangent(u)`` is ``forward(exp0(u))`` for a tangent vector u (..., d_in) at the origin, without
    the :math:`\log_0 \exp_0` round trip (:math:`W \otimes_c \exp_0 u = \exp_0(W u)`), so that several
    layers reading the same points share one :math:`\log_0`.
    """

    def __init__(self, d_in: int, d_out: int, *, c: float, heads: int | None = None, bias: bool = True,
                 clip: float | None = None) -> None:
        super().__init__()
        if heads is not None and bias:
            raise ValueError("a Möbius bias per head is not implemented: pass bias=False with heads")
        self.c, self.heads, self.clip = c, heads, clip
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None       # a point of the ball (the origin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip is not None:
            return self.forward_tangent(logmap0(x, c=self.c))
        if self.heads is None:
            return mobius_linear(x, self.weight, self.bias, c=self.c)
        return mobius_matvec_heads(self.weight, x, self.heads, c=self.c)

    def forward_tangent(self, u: torch.Tensor) -> torch.Tensor:
        w = u @ self.weight.T                                                    # (..., d_out)
        if self.heads is not None:
            w = w.unflatten(-1, (self.heads, w.shape[-1] // self.heads))         # (..., heads, d_out/heads)
        if self.clip is not None:
            w = clip_features(w, self.clip)
        y = expmap0(w, c=self.c)
        return y if self.bias is None else mobius_add(y, self.bias, c=self.c)


class HyperbolicAttention(nn.Module):
    """Multi-head attention from hyperbolic distances, aggregated by the Einstein midpoint; (B, N, d) → (B, N, d)."""

    def __init__(self, dim: int, heads: int, *, c: float, clip: float | None) -> None:
        super().__init__()
        self.c, self.heads = c, heads
        self.q, self.k, self.v = (MobiusLinear(dim, dim, c=c, heads=heads, bias=False, clip=clip) for _ in range(3))
        self.o = MobiusLinear(dim, dim, c=c, clip=clip)
        self.log_scale = nn.Parameter(torch.zeros(heads))          # β = e^s per head

    def forward(self, h: torch.Tensor, return_weights: bool = False):
        u = logmap0(h, c=self.c)                                                 # (B, N, d), shared by q, k, v
        q, k, v = (m.forward_tangent(u).transpose(1, 2) for m in (self.q, self.k, self.v))  # (B, H, N, dh)
        d = pairwise_dist(q, k, c=self.c)                                        # (B, H, N, N)
        scores = -self.log_scale.exp()[:, None, None] * d
        alpha = torch.softmax(scores.float(), dim=-1).to(v.dtype)               # float32 softmax
        heads = einstein_midpoint(v, alpha, c=self.c)                            # (B, H, N, dh)
        u = logmap0(heads, c=self.c).transpose(1, 2).flatten(-2)                 # (B, N, d) tangent at 0
        out = self.o.forward_tangent(u)
        return (out, alpha) if return_weights else out


class HyperbolicMLP(nn.Module):
    """Möbius linear → GELU in the tangent space at 0 → Möbius linear; (B, N, d) → (B, N, d)."""

    def __init__(self, dim: int, hidden: int, *, c: float, clip: float | None) -> None:
        super().__init__()
        self.c = c
        self.fc1, self.fc2 = MobiusLinear(dim, hidden, c=c, clip=clip), MobiusLinear(hidden, dim, c=c, clip=clip)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2.forward_tangent(F.gelu(logmap0(self.fc1(h), c=self.c)))


class HyperbolicBlock(nn.Module):
    """h ⊕ attn(h), then h ⊕ mlp(h), each projected to the dtype's ball margin."""

    def __init__(self, cfg: HVTConfig) -> None:
        super().__init__()
        self.c = cfg.c
        self.attn = HyperbolicAttention(cfg.dim, cfg.heads, c=cfg.c, clip=cfg.clip)
        self.mlp = HyperbolicMLP(cfg.dim, cfg.mlp_dim, c=cfg.c, clip=cfg.clip)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = project(mobius_add(h, self.attn(h), c=self.c), c=self.c)
        return project(mobius_add(h, self.mlp(h), c=self.c), c=self.c)


class HyperbolicMLR(nn.Module):
    r"""Ganea et al.'s hyperbolic MLR: class points p (K, d) on the ball, normals a = P_{0→p}(a₀), a₀ (K, d)."""

    def __init__(self, dim: int, n_classes: int, *, c: float) -> None:
        super().__init__()
        self.c = c
        self.p = nn.Parameter(torch.zeros(n_classes, dim))
        self.a = nn.Parameter(torch.empty(n_classes, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mlr_logits(x, self.p, transp0(self.p, self.a, c=self.c), c=self.c)


class HyperbolicViT(nn.Module):
    """The hyperbolic ViT: (B, H, W) images with pixels in [0, 1] → (B, n_classes) logits."""

    geometry = "hyperbolic"

    def __init__(self, cfg: HVTConfig) -> None:
        super().__init__()
        self.cfg, self.c = cfg, cfg.c
        self.embed = MobiusLinear(cfg.patch_dim, cfg.dim, c=cfg.c, bias=False, clip=cfg.clip)
        self.pos = nn.Parameter(torch.zeros(cfg.n_tokens, cfg.dim))   # the embedding's ball bias, one per position
        self.blocks = nn.ModuleList(HyperbolicBlock(cfg) for _ in range(cfg.depth))
        self.head = HyperbolicMLR(cfg.dim, cfg.n_classes, c=cfg.c)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) → (B, N, d) token points after the last block."""
        x = patchify(images, self.cfg.patch_size)                                # (B, N, p²) Euclidean pixels
        h = mobius_add(self.embed.forward_tangent(x), self.pos, c=self.c)       # (W ⊗ exp0 x) ⊕ pos: (B, N, d)
        for block in self.blocks:
            h = block(h)
        return h

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, d): the Einstein midpoint of the final tokens, the point the MLR classifies."""
        h = self.tokens(images)
        uniform = torch.full((h.shape[0], 1, h.shape[1]), 1.0 / h.shape[1], dtype=h.dtype)
        return einstein_midpoint(h, uniform, c=self.c).squeeze(-2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def ball_parameters(self) -> list[nn.Parameter]:
        """The parameters that are points of the ball: Möbius biases, position points, class points p."""
        return [p for name, p in self.named_parameters() if name.endswith(("bias", "pos", "head.p"))]


# ---------------------------------------------------------------- the Euclidean twin


class EuclideanAttention(nn.Module):
    """Scaled dot-product multi-head attention with a learned temperature per head; (B, N, d) → (B, N, d)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.o = nn.Linear(dim, dim)
        self.log_scale = nn.Parameter(torch.zeros(heads))

    def forward(self, h: torch.Tensor, return_weights: bool = False):
        b, n, d = h.shape
        q, k, v = (m(h).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for m in (self.q, self.k, self.v))                             # (B, H, N, dh)
        scores = self.log_scale.exp()[:, None, None] * (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        alpha = torch.softmax(scores.float(), dim=-1).to(v.dtype)                # (B, H, N, N)
        out = self.o((alpha @ v).transpose(1, 2).reshape(b, n, d))
        return (out, alpha) if return_weights else out


class EuclideanMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h)))


class EuclideanBlock(nn.Module):
    def __init__(self, cfg: HVTConfig) -> None:
        super().__init__()
        self.attn = EuclideanAttention(cfg.dim, cfg.heads)
        self.mlp = EuclideanMLP(cfg.dim, cfg.mlp_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(h)
        return h + self.mlp(h)


class EuclideanMLR(nn.Module):
    r"""The c → 0 limit of the hyperbolic MLR: :math:`4\langle x - p_k, a_k\rangle`, a linear classifier."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(n_classes, dim))
        self.a = nn.Parameter(torch.empty(n_classes, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * (x @ self.a.T - (self.p * self.a).sum(-1))


class EuclideanViT(nn.Module):
    """The twin: the same ViT with ordinary linear layers, dot-product attention and a linear classifier."""

    geometry = "euclidean"

    def __init__(self, cfg: HVTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.patch_dim, cfg.dim, bias=False)
        self.pos = nn.Parameter(torch.zeros(cfg.n_tokens, cfg.dim))
        self.blocks = nn.ModuleList(EuclideanBlock(cfg) for _ in range(cfg.depth))
        self.head = EuclideanMLR(cfg.dim, cfg.n_classes)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        h = self.embed(patchify(images, self.cfg.patch_size)) + self.pos        # (B, N, d)
        for block in self.blocks:
            h = block(h)
        return h

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images).mean(dim=1)                                   # (B, d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def ball_parameters(self) -> list[nn.Parameter]:
        return []


# ---------------------------------------------------------------- building and training


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def _initialise(model: nn.Module, seed: int) -> None:
    """The same draws for both geometries: weights U(±1/√fan_in), biases and class points 0, position
    vectors N(0, 0.02²) (lifted by exp₀ in the ball), log-scales 0, class normals N(0, 1/d)."""
    gen = torch.Generator().manual_seed(int(seed))
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight":
            bound = 1.0 / math.sqrt(p.shape[1])
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 2 * bound - bound)
        elif leaf == "pos":
            v = POS_STD * torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.copy_(expmap0(v, c=model.cfg.c) if model.geometry == "hyperbolic" else v)
        elif leaf == "a":
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / math.sqrt(p.shape[1]))
        else:                                   # biases (the origin of the ball), class points, log-scales
            p.zero_()


def build(cfg: HVTConfig, geometry: str = "hyperbolic", *, seed: int = 0) -> nn.Module:
    """The ViT of ``geometry`` ("hyperbolic" or "euclidean"), initialised from ``seed`` (same draws for both)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}; got geometry={geometry!r}")
    model = HyperbolicViT(cfg) if geometry == "hyperbolic" else EuclideanViT(cfg)
    _initialise(model, seed)
    return model


def euclidean_twin(cfg: HVTConfig, *, seed: int = 0) -> EuclideanViT:
    """The Euclidean twin of ``HyperbolicViT(cfg)``: same parameter names and count, same initial draws."""
    return build(cfg, "euclidean", seed=seed)


def optimizer(model: nn.Module, lr: float) -> RiemannianAdam:
    """Riemannian Adam: ball points move along geodesics of the ball, every other parameter as in Adam."""
    ball = {id(p) for p in model.ball_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ball]}]
    if ball:
        groups.append({"params": model.ball_parameters(), "manifold": PoincareBall(model.cfg.c)})
    return RiemannianAdam(groups, lr=lr)


def _check_data(images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 3 or not images.is_floating_point():
        raise ValueError(f"images must be a floating (B, H, W) tensor; got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if labels is not None and (labels.shape != images.shape[:1] or labels.dtype != torch.long):
        raise ValueError(f"labels must be a (B,) long tensor with B = {images.shape[0]}; got "
                         f"shape {tuple(labels.shape)}, dtype {labels.dtype}")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(B, H, W) → (B,) predicted classes."""
    _check_data(images)
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    _check_data(images, labels)
    return float((predict(model, images) == labels).double().mean())


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float = 1e-2,
        batch_size: int = 64, seed: int = 0, eval_images: torch.Tensor | None = None,
        eval_labels: torch.Tensor | None = None) -> dict[str, list[float]]:
    """Train with cross-entropy and :func:`optimizer`, minibatches shuffled by a generator seeded with ``seed``.

    Returns:
        ``train_loss`` (mean per epoch) and, with eval data, ``eval_accuracy`` after each epoch. A non-finite
        loss raises ``FloatingPointError`` naming the epoch (the ball's margins are meant to prevent it).
    """
    _check_data(images, labels)
    if not isinstance(epochs, int) or epochs < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive ints; got epochs={epochs!r}, "
                         f"batch_size={batch_size!r}")
    opt = optimizer(model, lr)
    gen = torch.Generator().manual_seed(int(seed))
    history: dict[str, list[float]] = {"train_loss": [], "eval_accuracy": []}
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(images[idx]).float(), labels[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{model.geometry} ViT: non-finite loss in epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(idx)
        history["train_loss"].append(total / len(images))
        if eval_images is not None and eval_labels is not None:
            history["eval_accuracy"].append(accuracy(model, eval_images, eval_labels))
    return history


@torch.no_grad()
def token_radii(model: HyperbolicViT, images: torch.Tensor) -> torch.Tensor:
    """(B, N) hyperbolic distances of the final tokens from the origin: how far into the ball the model works
    (float32 can tell points apart up to ``MAX_DIST0[float32]`` ≈ 17.3 from the origin)."""
    _check_data(images)
    model.eval()
    return dist0(model.tokens(images), c=model.c)
