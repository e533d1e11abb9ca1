"""GPT-OSS routing: a router with bias, top-k on the logits, softmax over the k chosen.

Matches transformers' ``GptOssTopKRouter``. The combine weights are a softmax over the k
chosen logits only; ``scores`` (and P_i of the balance loss) are the softmax over all E.
"""

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
    softmax_result,
)


class GptOssRouter(TopKExperts, nn.Module):
    """Top-k on biased logits; weights = softmax of the chosen k logits (k = 4 in gpt-oss)."""

    scoring: ClassVar[str] = "softmax"            # scores: a softmax over all E experts
    causal: ClassVar[bool] = True                 # a token's choice depends on that token alone
    lab_name: ClassVar[str | None] = None         # the lab does not train it

    def __init__(self, hidden: int, num_experts: int, top_k: int = 4, *, balance: str = "switch") -> None:
        super().__init__()
        check_top_k(top_k, num_experts)
        self.hidden, self.num_experts, self.top_k, self.balance = hidden, num_experts, top_k, balance
        self.weight = centroids(num_experts, hidden)
        self.bias = nn.Parameter(torch.zeros(num_experts))

    @classmethod
    def from_spec(cls, hidden: int, spec: BlockSpec) -> Self:
        """The router an MoE block ``spec`` describes (see :class:`~moescope.moe.routers._common.BlockSpec`)."""
        return cls(hidden, spec.num_experts, spec.top_k, balance=spec.balance)

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> RouterResult:
        """x (..., H) -> routing."""
        flat = flat_tokens(x, self.hidden)
        logits = F.linear(flat, self.weight, self.bias)                  # (T, E)
        top, indices = logits.topk(self.top_k, dim=-1)
        weights = torch.softmax(fp32(top), dim=-1)
        probs = torch.softmax(fp32(logits), dim=-1)
        return softmax_result(fp32(logits), probs, indices, weights, balance=self.balance,
                              attention_mask=attention_mask)
