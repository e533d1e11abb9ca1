r"""Mixture-of-curvature experts (HELM-MiCE; He et al. 2025, "HELM: Hyperbolic Large Language Models via
Mixture-of-Curvature Experts"), at the lab's scale, with its Euclidean twin.

Each routed expert e lives in its own Lorentz space :math:`\mathbb{L}^H_{c_e}` (curvature −c_e, c_e
learnable, :math:`c_e = \operatorname{softplus}(\rho_e) + c_{\min}`). A token's hidden state v ∈ ℝ^H is
read as a tangent vector at the hyperboloid's origin o = (1/√c_e, 0), and expert e

1. maps it onto its manifold: :math:`x = \exp^{c_e}_o(0, v)` (:func:`expmap0`);
2. processes it there with HELM's Lorentzian feed-forward — Hypformer's curvature-aware linear map
   (HTC: a linear map of the space-like coordinates, the time coordinate recomputed so the result is on
   the sheet, :func:`lorentz_linear`) and its manifold-preserving activation (HRC: the SwiGLU product of
   the space-like coordinates, time recomputed, :func:`lorentz_swiglu`):
   :math:`y = \mathrm{HTC}_{W_d}(\mathrm{HRC}_{\text{SwiGLU}}(\mathrm{HTC}_{W_{gu}}(x)))`;
3. maps the result back: :math:`\log^{c_e}_o(y)` (:func:`logmap0`), a tangent vector at the origin.

The layer combines the experts' outputs by the **tangent-space weighted sum at the origin**,
:math:`\sum_j w_{tj}\,\log^{c_{e_j}}_o(y_{e_j})`: the tangent spaces at the origin of every
:math:`\mathbb{L}_{c}` are the same ℝ^H, so it is the one combination defined across curvatures without
rescaling points between manifolds (HELM combines with a Lorentzian centroid on the input manifold; at
the origin's tangent space the weighted sum is its first-order equivalent). Routing is any moescope
router (:data:`moescope.moe.routers.ROUTERS`): it sees the Euclidean hidden state and returns its named
:class:`~moescope.moe.RouterResult`; dispatch is moescope's per-expert ``loop`` path, the only one that
calls the expert bank's own :meth:`LorentzExperts.expert` (the fused paths read the weights directly
and would compute Euclidean experts).

Because HTC and HRC act on the space-like coordinates only, expert e equals
:math:`\psi_{c}\circ\mathrm{FFN}\circ\varphi_{c}` with the radial maps
:math:`\varphi_c(v) = \frac{\sinh(\sqrt c\lVert v\rVert)}{\sqrt c\lVert v\rVert}v` and
:math:`\psi_c(y) = \frac{\operatorname{asinh}(\sqrt c\lVert y\rVert)}{\sqrt c\lVert y\rVert}y`: curvature
stretches a token's norm exponentially on the way in and compresses logarithmically on the way out.
As c → 0 both maps tend to the identity, so **the layer tends to the Euclidean MoE with the same
weights** (the tests check the limit and its O(c) rate).

The Euclidean twin (:func:`build_twin`) is the same layer with :class:`EuclideanExperts`: the same
SwiGLU weights, and one learnable output gain per expert in place of the curvature, so total and
active parameter counts are equal (:func:`count_params`).

Numerics: tangent vectors are clipped so that √c‖v‖ ≤ ``MAX_DIST0[dtype]`` (the farthest an on-axis point
is representable from the origin, 17.3 in float32), and space-like outputs so that √c‖y_s‖ ≤
sinh(``MAX_DIST0``): float32 training stays finite however large the curvature grows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.geometry.curved import lorentz
from moescope.geometry.curved._numerics import MAX_DIST0, as_curvature, csqrt, min_norm
from moescope.moe.dispatch import dispatch
from moescope.moe.experts import Experts
from moescope.moe.result import MoEOutput
from moescope.moe.routers import ROUTERS

__all__ = [
    "ROUTER_CLASSES",
    "EuclideanExperts",
    "LorentzExperts",
    "MiCEConfig",
    "MiCELayer",
    "build_mice",
    "build_twin",
    "count_params",
    "expmap0",
    "logmap0",
    "lorentz_linear",
    "lorentz_swiglu",
    "origin",
]

# Routers by class name, derived from the catalogue (one fact, one place).
ROUTER_CLASSES: dict[str, type] = {r.__name__: r for r in ROUTERS}


# -- pure Lorentz operations --------------------------------------------------------------------
def origin(like: Tensor, c: object) -> Tensor:
    r"""The origin :math:`o = (1/\sqrt c, 0, \dots, 0)` of :math:`\mathbb{L}^n_c`, shaped like ``like`` (..., n + 1)."""
    cc = as_curvature(c, like=like)
    time = (1.0 / csqrt(cc)) * torch.ones_like(like[..., :1])
    return torch.cat([time, torch.zeros_like(like[..., 1:])], dim=-1)


def _clip_norm(v: Tensor, limit: float | Tensor) -> Tensor:
    """v (..., n) rescaled so that ‖v‖ <= limit (unchanged where it already is)."""
    norm = v.norm(dim=-1, keepdim=True).clamp_min(min_norm(v.dtype))
    return v * torch.clamp(limit / norm, max=1.0)


def expmap0(v: Tensor, *, c: object = 1.0) -> Tensor:
    r"""Tangent vector at the origin → point: v (..., n) (the space-like part of (0, v)) → (..., n + 1) on
    :math:`\mathbb{L}^n_c`, :math:`\exp_o(0, v) = \big(\cosh(\sqrt c\lVert v\rVert)/\sqrt c,\
    \sinh(\sqrt c\lVert v\rVert)\,v/(\sqrt c\lVert v\rVert)\big)`, through :func:`lorentz.expmap`.

    v is first clipped to √c‖v‖ <= ``MAX_DIST0[dtype]``.
    """
    cc = as_curvature(c, like=v)
    v = _clip_norm(v, MAX_DIST0[v.dtype] / csqrt(cc))
    u = F.pad(v, (1, 0))                                                  # (..., n + 1), time 0: tangent at o
    return lorentz.expmap(origin(u, cc), u, c=cc)


def logmap0(y: Tensor, *, c: object = 1.0) -> Tensor:
    r"""Point → tangent vector at the origin: y (..., n + 1) on :math:`\mathbb{L}^n_c` → (..., n), the space-like
    part of :math:`\log_o(y)` through :func:`lorentz.logmap` (its time part is 0: ⟨o, log_o y⟩_L = 0)."""
    cc = as_curvature(c, like=y)
    return lorentz.logmap(origin(y, cc), y, c=cc)[..., 1:]


def _on_sheet(space: Tensor, c: float | Tensor) -> Tensor:
    """Space-like coordinates (..., m) → the point (..., m + 1) of the sheet above them (√c‖space‖ clipped)."""
    space = _clip_norm(space, math.sinh(MAX_DIST0[space.dtype]) / csqrt(c))
    return lorentz.project(F.pad(space, (1, 0)), c=c)


def lorentz_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, c: object = 1.0) -> Tensor:
    r"""Hypformer's HTC (Yang et al. 2024, "Hypformer"; the linear layer HELM builds on): x (..., n + 1) on
    :math:`\mathbb{L}^n_c`, weight (m, n), bias (m,) → (..., m + 1) on :math:`\mathbb{L}^m_c`,

    .. math:: \mathrm{HTC}(x) = \big(\sqrt{\lVert W x_s + b\rVert^2 + 1/c},\ W x_s + b\big).
    """
    cc = as_curvature(c, like=x)
    return _on_sheet(F.linear(x[..., 1:], weight, bias), cc)


def lorentz_swiglu(x: Tensor, *, c: object = 1.0) -> Tensor:
    r"""HRC with a SwiGLU (Hypformer's manifold-preserving activation, HELM's LFFN gate): x (..., 2I + 1) on
    :math:`\mathbb{L}^{2I}_c` with space-like part (gate, up) → (..., I + 1) on :math:`\mathbb{L}^{I}_c` with
    space-like part silu(gate) ⊙ up, time recomputed."""
    cc = as_curvature(c, like=x)
    gate, up = x[..., 1:].chunk(2, dim=-1)
    return _on_sheet(F.silu(gate) * up, cc)


# -- configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MiCEConfig:
    """One MiCE layer. Also a :class:`~moescope.moe.routers.BlockSpec`: routers build themselves from it."""

    hidden: int = 32                 # H, the residual width of the lab's curvature LM
    num_experts: int = 4             # E: enough curvatures to order, few enough for a few-second run
    top_k: int = 2                   # Mixtral's 2 of E (token-choice routers that take a k)
    intermediate: int = 32           # I of each SwiGLU expert
    router: str = "TopKRouter"       # a class name in ROUTER_CLASSES
    # Initial curvatures c_e, spread geometrically over the experts. A LayerNorm output has norm ~√H
    # (5.7 at H = 32), so √c‖v‖ starts between 0.6 and 1.8: clearly curved, far from overflow.
    curvature_init: tuple[float, float] = (0.01, 0.1)
    min_curvature: float = 1e-4      # floor added to softplus: the exp map's 1/√c stays finite
    learn_curvature: bool = True     # HELM learns each expert's curvature
    # BlockSpec fields (routers read those of their own family); the routers' own defaults.
    normalize_topk: bool = True
    balance: str = "switch"
    capacity_factor: float | None = None
    n_group: int = 1
    topk_group: int = 1
    bias_update_rate: float = 1e-3
    temperature: float = 0.07

    def __post_init__(self) -> None:
        for name in ("hidden", "num_experts", "top_k", "intermediate"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k must be <= num_experts={self.num_experts}; got top_k={self.top_k}")
        if self.router not in ROUTER_CLASSES:
            raise ValueError(f"router must be one of {', '.join(ROUTER_CLASSES)}; got router={self.router!r}")
        ci = self.curvature_init
        if not (isinstance(ci, tuple) and len(ci) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ci)):
            raise ValueError(f"curvature_init must be a pair (low, high) of finite numbers; got curvature_init={ci!r}")
        lo, hi = ci
        if not (isinstance(self.min_curvature, (int, float)) and math.isfinite(self.min_curvature)
                and self.min_curvature >= 0):
            raise ValueError(f"min_curvature must be a finite number >= 0; got min_curvature={self.min_curvature!r}")
        if not self.min_curvature < lo <= hi:
            raise ValueError(f"curvature_init must satisfy min_curvature={self.min_curvature} < low <= high; "
                             f"got curvature_init={self.curvature_init!r}")

    def initial_curvatures(self) -> list[float]:
        """c_e at initialisation: E values geometrically spaced over ``curvature_init``."""
        lo, hi = self.curvature_init
        if self.num_experts == 1:
            return [math.sqrt(lo * hi)]
        return [lo * (hi / lo) ** (e / (self.num_experts - 1)) for e in range(self.num_experts)]

    def to_dict(self) -> dict:
        return asdict(self)


# -- expert banks -------------------------------------------------------------------------------------
class _SwiGLUBank(nn.Module):
    """SwiGLU weights in moescope's stacked layout (``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I)),
    initialised like :class:`~moescope.moe.Experts`; what the two banks share."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        ref = Experts(num_experts, hidden, intermediate)       # its init, its argument checks
        self.num_experts, self.hidden, self.intermediate = num_experts, hidden, intermediate
        self.gate_up_proj = nn.Parameter(ref.gate_up_proj.detach().clone())  # (E, 2I, H)
        self.down_proj = nn.Parameter(ref.down_proj.detach().clone())        # (E, H, I)

    @torch.no_grad()
    def load_experts(self, experts: Experts) -> None:
        """Copy the weights of a SwiGLU :class:`~moescope.moe.Experts` bank of the same shape (no biases)."""
        if experts.gate != "swiglu" or experts.activation_name != "silu" or experts.gate_up_bias is not None:
            raise ValueError("load_experts needs a SwiGLU (silu) expert bank without biases; got "
                             f"gate={experts.gate!r}, activation={experts.activation_name!r}, "
                             f"bias={experts.gate_up_bias is not None}")
        if experts.gate_up_proj.shape != self.gate_up_proj.shape:
            raise ValueError(f"expert bank shapes differ: {tuple(experts.gate_up_proj.shape)} vs "
                             f"{tuple(self.gate_up_proj.shape)} (E, 2I, H)")
        self.gate_up_proj.copy_(experts.gate_up_proj)
        self.down_proj.copy_(experts.down_proj)

    def check_input(self, x: Tensor) -> None:
        if x.dtype != self.gate_up_proj.dtype:
            raise ValueError(f"x is {x.dtype} but the layer's experts are {self.gate_up_proj.dtype}; convert one "
                             f"of them (x.to({self.gate_up_proj.dtype}) or layer.to({x.dtype}))")

    def params_per_expert(self) -> int:
        """Parameters one expert owns: its two projections and its one scalar (curvature or gain)."""
        return self.gate_up_proj[0].numel() + self.down_proj[0].numel() + 1


class LorentzExperts(_SwiGLUBank):
    """E SwiGLU experts, expert e on :math:`\\mathbb{L}^H_{c_e}` with a learnable c_e (see the module docstring).

    Args:
        num_experts, hidden, intermediate: E, H, I.
        curvatures: the E initial c_e (each > ``min_curvature``).
        min_curvature: c_e = softplus(ρ_e) + min_curvature.
        learn: c_e is a parameter (True) or a fixed buffer (False).
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int, *, curvatures: list[float],
                 min_curvature: float = 1e-4, learn: bool = True) -> None:
        super().__init__(num_experts, hidden, intermediate)
        c = torch.as_tensor(curvatures, dtype=torch.float32) - min_curvature
        if c.shape != (num_experts,) or not bool((c > 0).all()):
            raise ValueError(f"curvatures must be {num_experts} values above min_curvature={min_curvature}; "
                             f"got {list(curvatures)!r}")
        rho = c + torch.log(-torch.expm1(-c))                 # softplus⁻¹(c) = c + log(1 − e^{−c}), stable
        self.min_curvature = float(min_curvature)
        if learn:
            self.rho = nn.Parameter(rho)
        else:
            self.register_buffer("rho", rho)

    @property
    def curvatures(self) -> Tensor:
        """(E,) c_e = softplus(ρ_e) + c_min > 0 (the expert's space has curvature −c_e)."""
        return F.softplus(self.rho) + self.min_curvature

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert e on (N, H) tangent vectors at the origin -> (N, H) tangent vectors at the origin."""
        c = self.curvatures[e].to(x.dtype)
        p = expmap0(x, c=c)                                                      # (N, H + 1) on L^H_c
        h = lorentz_swiglu(lorentz_linear(p, self.gate_up_proj[e], c=c), c=c)    # (N, I + 1) on L^I_c
        return logmap0(lorentz_linear(h, self.down_proj[e], c=c), c=c)           # (N, H)


class EuclideanExperts(_SwiGLUBank):
    """The twin's experts: the same SwiGLU FFNs, expert e scaled by a learnable gain g_e (init 1), the one
    scalar per expert that stands where :class:`LorentzExperts` has its curvature."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__(num_experts, hidden, intermediate)
        self.gain = nn.Parameter(torch.ones(num_experts))

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert e on (N, H) rows -> (N, H): g_e · W_d (silu(W_g x) ⊙ W_u x)."""
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return self.gain[e].to(x.dtype) * F.linear(F.silu(gate) * up, self.down_proj[e])


# -- the layer ---------------------------------------------------------------------------------------------
class MiCELayer(nn.Module):
    """Route, run the chosen experts of ``experts`` (a :class:`LorentzExperts` for MiCE, an
    :class:`EuclideanExperts` for the twin), combine by the tangent-space weighted sum.

    ``forward(x (..., H), attention_mask=None) -> MoEOutput`` (hidden (..., H), routing over the flattened
    tokens), the contract of :class:`~moescope.moe.MoELayer`, so it drops into the lab's ``Block``.
    """

    def __init__(self, *, router: nn.Module, experts: LorentzExperts | EuclideanExperts) -> None:
        super().__init__()
        if not isinstance(experts, (LorentzExperts, EuclideanExperts)):
            raise TypeError(f"experts must be LorentzExperts or EuclideanExperts; got {type(experts).__name__}")
        if getattr(router, "num_experts", experts.num_experts) != experts.num_experts:
            raise ValueError(f"router has {router.num_experts} experts but the expert bank has {experts.num_experts}")
        if getattr(router, "hidden", experts.hidden) != experts.hidden:
            raise ValueError(f"router expects hidden size {router.hidden} but the experts have {experts.hidden}")
        self.router, self.experts = router, experts

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> MoEOutput:
        """x (..., H) -> MoEOutput; ``attention_mask`` (leading shape of x, 1 = real token) as in MoELayer."""
        self.experts.check_input(x)
        routing = self.router(x, attention_mask=attention_mask)
        flat = x.reshape(-1, x.shape[-1])                                         # (T, H)
        out = dispatch(flat, routing.indices, routing.weights, self.experts,
                       weight_input=routing.weight_input, method="loop")          # calls experts.expert(e, ·)
        return MoEOutput(hidden=out.view(x.shape), routing=routing)


def _router(cfg: MiCEConfig) -> nn.Module:
    return ROUTER_CLASSES[cfg.router].from_spec(cfg.hidden, cfg)


def build_mice(cfg: MiCEConfig, *, experts: Experts | None = None, router: nn.Module | None = None) -> MiCELayer:
    """The MiCE layer ``cfg`` describes; ``experts`` (a SwiGLU bank) and ``router`` start it from given weights
    (the router is shared, not copied: pass a copy to keep two layers apart)."""
    bank = LorentzExperts(cfg.num_experts, cfg.hidden, cfg.intermediate, curvatures=cfg.initial_curvatures(),
                          min_curvature=cfg.min_curvature, learn=cfg.learn_curvature)
    if experts is not None:
        bank.load_experts(experts)
    return MiCELayer(router=_router(cfg) if router is None else router, experts=bank)


def build_twin(cfg: MiCEConfig, *, experts: Experts | None = None, router: nn.Module | None = None) -> MiCELayer:
    """The Euclidean twin of :func:`build_mice` (same router, same SwiGLU weights, a gain for each curvature)."""
    bank = EuclideanExperts(cfg.num_experts, cfg.hidden, cfg.intermediate)
    if experts is not None:
        bank.load_experts(experts)
    return MiCELayer(router=_router(cfg) if router is None else router, experts=bank)


def count_params(layer: MiCELayer) -> dict[str, float]:
    """Total parameters, and those active per token: the router's plus ``mean_experts_per_token`` experts'
    (each expert's projections and its scalar)."""
    router = sum(p.numel() for p in layer.router.parameters())
    total = sum(p.numel() for p in layer.parameters())
    active = router + layer.router.mean_experts_per_token * layer.experts.params_per_expert()
    return {"total": int(total), "active": float(active), "router": int(router),
            "per_expert": int(layer.experts.params_per_expert())}
