"""Soft MoE: every expert processes soft mixtures of all tokens (Puigcerver et al. 2023).

"From Sparse to Soft Mixtures of Experts" (arXiv:2308.00951), Algorithm 1 and §2.3, with the
semantics of google-research/vmoe ``vmoe/projects/soft_moe/router.py`` (``SoftRouter``) and the
``EinsumDispatcher`` of ``vmoe/moe.py``. For one group X (T, H) and slot parameters Φ (H, E·S),
slot n = e·S + s belonging to expert e:

    logits = norm(X) · (scale · norm(Φ))              (T, E·S)     norm(v) = v / sqrt(‖v‖² + ε)
    D = softmax over tokens of logits    (dispatch)   columns sum to 1 over T
    C = softmax over all E·S slots       (combine)    rows sum to 1
    X̃ = Dᵀ X,   Ỹ[slots of e] = expert_e(X̃[slots of e]),   Y = C Ỹ          (T, H)

There is no auxiliary loss: every slot is filled, so load is balanced by construction.

.. warning:: Soft MoE is **not causal**. D is a softmax over the token axis, so every slot —
   and through C every output — mixes all positions of the group: a token's output depends on
   later tokens. Use it for encoders / non-causal objectives, never inside a causal decoder.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from moescope.moe.experts import Experts
from moescope.moe.result import MoEOutput, RouterResult
from moescope.moe.routers._common import check_positive

EPS = 1e-6  # vmoe's ``normalize``: x · rsqrt(Σx² + eps), eps added to the squared norm


def l2_normalize(x: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """x / sqrt(Σ_dim x² + eps), exactly vmoe's ``normalize`` (eps inside the root)."""
    return x * torch.rsqrt(x.square().sum(dim, keepdim=True) + eps)


def soft_logits(x: Tensor, slots: Tensor, scale: Tensor, *, normalize: bool = True) -> Tensor:
    """Slot logits x (G, T, H), slots Φ (H, N), scalar scale -> (G, T, N) in ≥ float32.

    ``normalize``: L2-normalise x and Φ along H first (paper §2.3). vmoe multiplies ``scale``
    into whichever of the two operands is smaller; logits are bilinear, so putting it on Φ (as
    the paper writes it) is the same number.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, mu = x.to(dtype), slots.to(dtype)
    if normalize:
        x, mu = l2_normalize(x, -1), l2_normalize(mu, 0)
    return torch.einsum("gth,hn->gtn", x, mu * scale.to(dtype))


def soft_weights(logits: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(G, T, N) logits -> dispatch D (softmax over T) and combine C (softmax over N).

    ``mask`` (G, T) bool, True = real token: padded tokens get exactly zero dispatch weight
    (their logits are pushed to the dtype's minimum before the softmax over T; a group with no
    real token dispatches nothing). Their combine rows are computed like any other.
    """
    logits = logits.float() if logits.dtype != torch.float64 else logits
    if mask is None:
        dispatch = torch.softmax(logits, dim=1)
    else:
        m = mask.unsqueeze(-1)
        dispatch = torch.softmax(logits.masked_fill(~m, torch.finfo(logits.dtype).min), dim=1) * m
    return dispatch, torch.softmax(logits, dim=-1)


def _mean(v: Tensor, w: Tensor) -> Tensor:
    """Σ w·v / Σ w over the leading dims that the weights w cover (0 when Σ w = 0)."""
    w = w.to(v.dtype)
    return (v * w.reshape(w.shape + (1,) * (v.ndim - w.ndim))).sum(tuple(range(w.ndim))) / w.sum().clamp_min(1)


def soft_stats(dispatch: Tensor, combine: Tensor, mask: Tensor, num_experts: int) -> dict[str, Tensor]:
    """Dispatch/combine statistics (G, T, N) -> named scalars and one (E,) vector, detached.

    * ``dispatch_entropy``: mean over slots of the entropy of each slot's dispatch distribution
      over the group's real tokens, divided by log(real tokens) (1 = uniform mix, 0 = one token).
    * ``dispatch_max``: mean over slots of the largest dispatch weight (vmoe's
      ``dispatch_weights_max_mean``).
    * ``combine_entropy``: mean over real tokens of the entropy of the combine distribution over
      the N = E·S slots, divided by log N.
    * ``combine_max``: mean over real tokens of the largest combine weight (vmoe's
      ``combine_weights_max_mean``).
    * ``expert_combine_mass``: (E,) mean over real tokens of the combine mass on each expert.

    Groups without real tokens are left out of the slot means.
    """
    d, c, g, t, n = dispatch.detach(), combine.detach(), *combine.shape
    real = mask.sum(1)                                                        # (G,)
    d_ent = -torch.special.xlogy(d, d).sum(1) / real.clamp_min(2).log().to(d.dtype).unsqueeze(-1)  # (G, N)
    c_ent = -torch.special.xlogy(c, c).sum(-1) / (math.log(n) if n > 1 else 1.0)                   # (G, T)
    return {"dispatch_entropy": _mean(d_ent, real > 0).mean(), "dispatch_max": _mean(d.amax(1), real > 0).mean(),
            "combine_entropy": _mean(c_ent, mask), "combine_max": _mean(c.amax(-1), mask),
            "expert_combine_mass": _mean(c.reshape(g, t, num_experts, n // num_experts).sum(-1), mask)}


class SoftMoELayer(nn.Module):
    """Soft MoE layer: E experts with S slots each, slots filled by soft mixtures of tokens.

    A (B, L, H) input is B groups of L tokens (each group is mixed independently); a (T, H)
    input is one group; more leading dims are all groups but the last, which is the tokens.
    **Not causal** (see the module docstring).

    Args:
        hidden: H.
        experts: the :class:`~moescope.moe.experts.Experts` bank (E experts of width H).
        slots_per_expert: S, slots each expert processes per group (vmoe's ``num_slots``).
        normalize: L2-normalise tokens and slot parameters before the logits (paper §2.3);
            without it ``scale`` is a plain, redundant temperature on x·Φ.

    Parameters: ``slots`` Φ (H, E·S), slot n = e·S + s (vmoe's ``mu`` (H, E, S) flattened),
    lecun-normal as in vmoe (truncated normal, fan-in E·H as jax counts it for (H, E, S));
    ``scale`` () initialised to 1.

    The :class:`RouterResult` describes soft routing over the flattened tokens T_total:
    ``logits`` (T_total, E·S) raw slot logits (float32, float64 for float64 input);
    ``scores`` (T_total, E·S) combine weights C; ``indices`` (T_total, E) every expert for every
    token (each expert processes a mixture of all of them); ``weights`` (T_total, E) each
    token's combine mass per expert (rows sum to 1); ``tokens_per_expert`` (E,) the number of
    real tokens every expert mixes over (T_total without a mask); no auxiliary losses; ``stats``
    from :func:`soft_stats`. Padded tokens keep their computed combine rows, but zero output.

    Like the routers (:data:`moescope.moe.routers.ROUTERS`) it describes itself, though it is a
    layer with its own slots rather than a router an :class:`~moescope.moe.MoELayer` takes.
    """

    # Dispatch is a softmax over tokens and combine one over slots: no per-token distribution
    # over experts of the softmax or sigmoid kind, so the scoring is its own.
    scoring: ClassVar[str] = "soft"
    causal: ClassVar[bool] = False                # dispatch mixes every position of the group
    lab_name: ClassVar[str | None] = "soft"       # the lab's MoESpec.router

    def __init__(self, *, hidden: int, experts: Experts, slots_per_expert: int = 1, normalize: bool = True) -> None:
        super().__init__()
        check_positive(hidden=hidden, slots_per_expert=slots_per_expert)
        if experts.hidden != hidden:
            raise ValueError(f"experts have hidden size {experts.hidden}; got hidden={hidden}")
        self.hidden, self.num_experts, self.slots_per_expert = hidden, experts.num_experts, slots_per_expert
        self.normalize, self.experts = normalize, experts
        self.slots = nn.Parameter(torch.empty(hidden, experts.num_experts * slots_per_expert))  # (H, E·S)
        self.scale = nn.Parameter(torch.ones(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # jax lecun_normal: truncated N(0, 1/fan_in) at ±2σ, σ corrected for the truncation.
        std = 1 / math.sqrt(self.hidden * self.num_experts) / 0.87962566103423978
        nn.init.trunc_normal_(self.slots, std=std, a=-2 * std, b=2 * std)
        nn.init.ones_(self.scale)

    @property
    def max_experts_per_token(self) -> int:
        """E: every token contributes to every expert's slots."""
        return self.num_experts

    def _experts(self, slots: Tensor) -> Tensor:
        """(G, E·S, H) slot inputs -> (G, E·S, H): expert e on its S slots of every group."""
        g, e, s, h = slots.shape[0], self.num_experts, self.slots_per_expert, self.hidden
        rows = slots.reshape(g, e, s, h).transpose(0, 1).reshape(e, g * s, h)     # (E, G·S, H)
        ex = self.experts                                                          # equal counts: one bmm
        first = torch.bmm(rows, ex.gate_up_proj.transpose(1, 2))                  # (E, G·S, 2I | I)
        if ex.gate_up_bias is not None:
            first = first + ex.gate_up_bias.unsqueeze(1)
        y = torch.bmm(ex.inner(first), ex.down_proj.transpose(1, 2))              # (E, G·S, H)
        if ex.down_bias is not None:
            y = y + ex.down_bias.unsqueeze(1)
        return y.reshape(e, g, s, h).transpose(0, 1).reshape(g, e * s, h)         # (G, E·S, H)

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> MoEOutput:
        """x (..., T, H) -> MoEOutput(hidden (..., T, H), soft routing of the flattened tokens).

        ``attention_mask`` (same leading shape as x, 1 = real token): padded tokens get zero
        dispatch weight (so cannot influence any output) and a zero output.
        """
        if x.ndim < 2 or x.shape[-1] != self.hidden:
            raise ValueError(f"SoftMoELayer expects input (..., T, {self.hidden}); got shape {tuple(x.shape)}")
        if x.shape[-2] == 0:
            raise ValueError(f"Soft MoE needs at least one token per group (T >= 1); got shape {tuple(x.shape)}")
        self.experts.check_input(x)
        if attention_mask is not None and attention_mask.shape != x.shape[:-1]:
            raise ValueError(f"attention_mask must have shape {tuple(x.shape[:-1])}; "
                             f"got {tuple(attention_mask.shape)}")
        groups = x.reshape(-1, x.shape[-2], self.hidden)                          # (G, T, H)
        mask = (torch.ones(groups.shape[:2], dtype=torch.bool, device=x.device) if attention_mask is None
                else attention_mask.reshape(groups.shape[:2]).bool())             # (G, T)
        logits = soft_logits(groups, self.slots, self.scale, normalize=self.normalize)  # (G, T, N)
        dispatch, combine = soft_weights(logits, None if attention_mask is None else mask)
        slot_in = torch.einsum("gtn,gth->gnh", dispatch.to(x.dtype), groups)      # (G, N, H) = Dᵀ X
        out = torch.einsum("gtn,gnh->gth", combine.to(x.dtype), self._experts(slot_in))  # (G, T, H) = C Ỹ
        if attention_mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        n_tok, e = groups.shape[0] * groups.shape[1], self.num_experts
        flat_c = combine.reshape(n_tok, combine.shape[-1])                          # (T_total, E·S)
        routing = RouterResult(
            logits=logits.reshape(n_tok, logits.shape[-1]), scores=flat_c,
            indices=torch.arange(e, device=x.device).repeat(n_tok, 1),
            weights=flat_c.reshape(n_tok, e, self.slots_per_expert).sum(-1),
            tokens_per_expert=torch.full((e,), int(mask.sum()), dtype=torch.int64, device=x.device),
            stats=soft_stats(dispatch, combine, mask, e))
        return MoEOutput(hidden=out.reshape(x.shape), routing=routing)

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, num_experts={self.num_experts}, slots_per_expert={self.slots_per_expert}, "
                f"normalize={self.normalize}")
