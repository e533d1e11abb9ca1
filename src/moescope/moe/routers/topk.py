"""Top-k softmax routing: Mixtral, and with ``normalize_topk=False`` Qwen2/Qwen3-MoE and OLMoE."""

from __future__ import annotations

from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.moe.result import RouterResult
from moescope.moe.routers._common import (
    BlockSpec,
    TopKExperts,
    centroids,
    check_top_k,
    flat_tokens,
    fp32,
    jitter,
    softmax_result,
)


class TopKRouter(TopKExperts, nn.Module):
    """softmax over all E experts in float32 → top-k → (optionally) renormalise to sum 1.

    Reproduces ``MixtralTopKRouter`` (``normalize_topk=True``) and the Qwen2-MoE / Qwen3-MoE
    / OLMoE routers with ``norm_topk_prob=False`` (``normalize_topk=False``).

    Args:
        hidden: H.
        num_experts: E.
        top_k: k experts per token.
        normalize_topk: divide the k chosen probabilities by their sum.
        jitter: multiplicative input noise in training (0 = off).
        balance: load-balancing convention of :func:`moescope.moe.losses.load_balancing_loss`.
    """

    scoring: ClassVar[str] = "softmax"            # scores: a softmax over the E experts
    causal: ClassVar[bool] = True                 # a token's choice depends on that token alone
    lab_name: ClassVar[str | None] = "topk"       # the lab's MoESpec.router

    def __init__(self, hidden: int, num_experts: int, top_k: int = 2, *, normalize_topk: bool = True,
                 jitter: float = 0.0, balance: str = "switch") -> None:
        super().__init__()
        check_top_k(top_k, num_experts)
        self.hidden, self.num_experts, self.top_k = hidden, num_experts, top_k
        self.normalize_topk, self.jitter, self.balance = normalize_topk, jitter, balance
        self.weight = centroids(num_experts, hidden)  # (E, H)

    @classmethod
    def from_spec(cls, hidden: int, spec: BlockSpec) -> Self:
        """The router an MoE block ``spec`` describes (see :class:`~moescope.moe.routers._common.BlockSpec`)."""
        return cls(hidden, spec.num_experts, spec.top_k, normalize_topk=spec.normalize_topk, balance=spec.balance)

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> RouterResult:
        """x (..., H) -> routing of the T = prod(...) tokens."""
        x = jitter(flat_tokens(x, self.hidden), self.jitter, self.training)
        logits = fp32(F.linear(x, self.weight))                      # (T, E)
        probs = torch.softmax(logits, dim=-1)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)       # (T, k), descending
        if self.normalize_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        return softmax_result(logits, probs, indices, weights, balance=self.balance, attention_mask=attention_mask)
