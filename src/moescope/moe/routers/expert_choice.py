"""Expert Choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing").

Experts choose tokens: with S = softmax over experts of the router logits (T, E), expert e
takes the C = ceil(capacity_factor · T / E) tokens with the highest S[:, e] and combines
them with weight S[t, e] (eq. 1–2 of the paper; capacity_factor c = 2 there). Load is
perfectly balanced by construction, so there is no balance loss; a token may get 0, 1 or
up to E experts (the result pads with -1).

Not causal: which tokens an expert takes depends on the whole batch, so a position's output
can depend on later positions. Use it for non-causal objectives only.
"""

from __future__ import annotations

import math
from typing import ClassVar, Self

import torch
from torch import Tensor, nn

from moescope.moe.losses import router_z_loss
from moescope.moe.result import RouterResult, count_tokens
from moescope.moe.routers._common import BlockSpec, aux_losses, centroids, check_positive, flat_tokens, fp32_linear


class ExpertChoiceRouter(nn.Module):
    """Each expert picks its top-C tokens; token-major (T, k_max) result padded with -1.

    ``capacity_factor`` c: C = ceil(c · T / E) tokens per expert; None: ``default_capacity_factor``.
    """

    scoring: ClassVar[str] = "softmax"                # scores: a softmax over the E experts
    causal: ClassVar[bool] = False                    # experts choose among all tokens of the batch
    lab_name: ClassVar[str | None] = "expert_choice"  # the lab's MoESpec.router
    default_capacity_factor: ClassVar[float] = 2.0    # c = 2 of the paper's main results (Zhou et al. 2022)

    def __init__(self, hidden: int, num_experts: int, *, capacity_factor: float | None = None) -> None:
        super().__init__()
        check_positive(hidden=hidden, num_experts=num_experts)
        if capacity_factor is None:
            capacity_factor = self.default_capacity_factor
        if not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0; got capacity_factor={capacity_factor!r}")
        self.hidden, self.num_experts, self.capacity_factor = hidden, num_experts, capacity_factor
        self.weight = centroids(num_experts, hidden)

    @classmethod
    def from_spec(cls, hidden: int, spec: BlockSpec) -> Self:
        """The router an MoE block ``spec`` describes (see :class:`~moescope.moe.routers._common.BlockSpec`)."""
        return cls(hidden, spec.num_experts, capacity_factor=spec.capacity_factor)

    @property
    def max_experts_per_token(self) -> int:
        """E: a token may be chosen by every expert (or by none)."""
        return self.num_experts

    @property
    def mean_experts_per_token(self) -> float:
        """Expert evaluations per token on average: c (E experts × c·T/E tokens each, over T tokens;
        C's rounding up ignored)."""
        return float(self.capacity_factor)

    def capacity(self, tokens: int) -> int:
        return min(tokens, math.ceil(self.capacity_factor * tokens / self.num_experts))

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> RouterResult:
        """x (..., H) -> routing; padding (mask 0) is never chosen."""
        flat = flat_tokens(x, self.hidden)
        tokens = flat.shape[0]
        logits = fp32_linear(flat, self.weight)                           # (T, E)
        probs = torch.softmax(logits, dim=-1)
        eligible = probs if attention_mask is None else probs.masked_fill(
            attention_mask.reshape(-1, 1) == 0, -1.0)
        cap = self.capacity(tokens)
        token_idx = eligible.t().topk(cap, dim=-1).indices                # (E, C)
        chosen = torch.zeros(tokens, self.num_experts, dtype=torch.bool, device=flat.device)
        chosen[token_idx, torch.arange(self.num_experts, device=flat.device).unsqueeze(1)] = True
        if attention_mask is not None:
            chosen &= attention_mask.reshape(-1, 1).bool()
        per_token = chosen.sum(-1)
        k_max = max(int(per_token.max()), 1) if tokens else 1
        key = torch.where(chosen, probs + 1.0, torch.zeros_like(probs))  # chosen first, by weight
        top_key, indices = key.topk(k_max, dim=-1)
        valid = top_key > 0
        weights = torch.where(valid, probs.gather(1, indices), 0.0)
        indices = torch.where(valid, indices, -1)
        return RouterResult(logits=logits, scores=probs, indices=indices, weights=weights,
                            tokens_per_expert=count_tokens(indices, self.num_experts),
                            aux_losses=aux_losses(z_loss=lambda: router_z_loss(logits, attention_mask)),
                            stats={"capacity": torch.tensor(cap), "experts_per_token": per_token.float(),
                                   "unrouted_fraction": (per_token == 0).float().sum() / max(tokens, 1)})
