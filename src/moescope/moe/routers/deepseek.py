"""DeepSeek-V3 routing: sigmoid scores, a selection-only bias, group-limited top-k.

DeepSeek-V3 technical report (2024), §2.1.2, eqs. 12–20:

* s_{i,t} = sigmoid(u_t · e_i); expert i is chosen by s_{i,t} + b_i (the bias b only
  *selects*); the combine weights are the *unbiased* s of the chosen experts, renormalised
  (+1e-20) and multiplied by ``routed_scaling_factor``;
* group-limited routing: experts form ``n_group`` groups, a group scores the sum of its top-2
  biased scores, only the best ``topk_group`` groups stay eligible (others get -inf);
* auxiliary-loss-free balancing (eq. 16 context): after each optimiser step,
  b_i <- b_i + γ sign(mean load − load_i) — :meth:`DeepSeekV3Router.update_bias`;
* the complementary sequence-wise balance loss (eqs. 17–20), here ``seq_balance``.

Matches transformers' ``DeepseekV3TopkRouter`` (its ``e_score_correction_bias`` is our
``selection_bias``).
"""

from __future__ import annotations

from typing import ClassVar, Self

import torch
from torch import Tensor, nn

from moescope.moe.losses import load_balancing_loss
from moescope.moe.result import RouterResult, count_tokens
from moescope.moe.routers._common import (
    BlockSpec,
    TopKExperts,
    aux_losses,
    centroids,
    check_positive,
    check_top_k,
    flat_tokens,
    fp32_linear,
)


class DeepSeekV3Router(TopKExperts, nn.Module):
    """Sigmoid top-k router with selection bias and group-limited choice.

    Args:
        hidden: H.
        num_experts: E (routed experts; shared experts live in the layer).
        top_k: k experts per token (8 in DeepSeek-V3).
        n_group: groups the experts form (E must divide evenly, >= 2 experts per group).
        topk_group: groups kept per token.
        routed_scaling_factor: multiplies the combine weights (2.5 in DeepSeek-V3).
        normalize_topk: renormalise the chosen scores to sum 1 (+1e-20) before scaling.
        bias_update_rate: γ of the auxiliary-loss-free bias update (1e-3 in the report).
    """

    scoring: ClassVar[str] = "sigmoid"              # scores: one sigmoid per expert (eq. 15)
    causal: ClassVar[bool] = True                   # a token's choice depends on that token alone
    lab_name: ClassVar[str | None] = "deepseek_v3"  # the lab's MoESpec.router

    def __init__(self, hidden: int, num_experts: int, top_k: int = 8, *, n_group: int = 1, topk_group: int = 1,
                 routed_scaling_factor: float = 1.0, normalize_topk: bool = True,
                 bias_update_rate: float = 1e-3) -> None:
        super().__init__()
        check_top_k(top_k, num_experts)
        check_positive(n_group=n_group, topk_group=topk_group)
        if num_experts % n_group or num_experts // n_group < 2:
            raise ValueError(f"num_experts={num_experts} must split into n_group={n_group} groups of >= 2 experts")
        if topk_group > n_group:
            raise ValueError(f"topk_group must be <= n_group={n_group}; got topk_group={topk_group}")
        if top_k > topk_group * (num_experts // n_group):
            raise ValueError(f"top_k={top_k} exceeds the {topk_group * (num_experts // n_group)} experts "
                             f"of the {topk_group} kept groups")
        self.hidden, self.num_experts, self.top_k = hidden, num_experts, top_k
        self.n_group, self.topk_group = n_group, topk_group
        self.routed_scaling_factor, self.normalize_topk = routed_scaling_factor, normalize_topk
        self.bias_update_rate = bias_update_rate
        self.weight = centroids(num_experts, hidden)
        self.register_buffer("selection_bias", torch.zeros(num_experts))

    @classmethod
    def from_spec(cls, hidden: int, spec: BlockSpec) -> Self:
        """The router an MoE block ``spec`` describes (see :class:`~moescope.moe.routers._common.BlockSpec`)."""
        return cls(hidden, spec.num_experts, spec.top_k, n_group=spec.n_group, topk_group=spec.topk_group,
                   normalize_topk=spec.normalize_topk, bias_update_rate=spec.bias_update_rate)

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> RouterResult:
        """x (T, H) or (B, S, H) (sequences for the sequence-wise loss) -> routing."""
        seq_len = x.shape[-2] if x.ndim >= 3 else None
        flat = flat_tokens(x, self.hidden)
        logits = fp32_linear(flat, self.weight)                           # (T, E)
        scores = torch.sigmoid(logits)
        choice = scores + self.selection_bias                             # selection only
        if self.n_group > 1:
            grouped = choice.view(-1, self.n_group, self.num_experts // self.n_group)
            group_score = grouped.topk(2, dim=-1).values.sum(-1)          # (T, G)
            keep = torch.zeros_like(group_score, dtype=torch.bool)
            keep.scatter_(1, group_score.topk(self.topk_group, dim=-1).indices, True)
            choice = choice.masked_fill(~keep.repeat_interleave(self.num_experts // self.n_group, 1), float("-inf"))
        indices = choice.topk(self.top_k, dim=-1).indices                 # (T, k), best first
        weights = scores.gather(1, indices)
        if self.normalize_topk:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        weights = weights * self.routed_scaling_factor
        aux = aux_losses(seq_balance=lambda: load_balancing_loss(scores, indices, convention="deepseek_seq",
                                                                 attention_mask=attention_mask,
                                                                 sequence_length=seq_len))
        return RouterResult(logits=logits, scores=scores, indices=indices, weights=weights,
                            tokens_per_expert=count_tokens(indices, self.num_experts), aux_losses=aux,
                            stats={"selection_bias": self.selection_bias.detach().clone()})

    @torch.no_grad()
    def update_bias(self, tokens_per_expert: Tensor) -> None:
        """b_i <- b_i + γ · sign(mean load − load_i): under-loaded experts get chosen more.

        Call after each optimiser step with the step's (E,) load (summed over layers'
        micro-batches, and all-reduced across ranks when data-parallel).
        """
        load = tokens_per_expert.float().to(self.selection_bias.device)
        if load.shape != (self.num_experts,):
            raise ValueError(f"tokens_per_expert must have shape ({self.num_experts},); got {tuple(load.shape)}")
        self.selection_bias += self.bias_update_rate * torch.sign(load.mean() - load)
