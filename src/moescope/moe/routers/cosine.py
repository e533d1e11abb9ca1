"""Cosine routing: the lecture's "angle between the token and each expert centroid".

logits_{t,e} = cos(x_t, c_e) / τ with a learnable temperature τ (stored as log τ), then the
same softmax → top-k → renormalise as :class:`TopKRouter`. Because |cos| <= 1, the logits
are bounded by 1/τ whatever the token norm, so the choice depends on the angle alone (cf.
X-MoE, Chi et al. 2022, which also routes by cosine in a low-dimensional projection).
"""

from __future__ import annotations

import math
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


class CosineRouter(TopKExperts, nn.Module):
    """Top-k routing on cosine similarity to the expert centroids, with learnable temperature.

    Args:
        hidden, num_experts, top_k, normalize_topk, jitter, balance: as :class:`TopKRouter`.
        temperature: initial τ (0.07 after X-MoE's choice; smaller = sharper).
    """

    scoring: ClassVar[str] = "softmax"            # scores: a softmax over the E experts of cos/τ
    causal: ClassVar[bool] = True                 # a token's choice depends on that token alone
    lab_name: ClassVar[str | None] = "cosine"     # the lab's MoESpec.router

    def __init__(self, hidden: int, num_experts: int, top_k: int = 2, *, temperature: float = 0.07,
                 normalize_topk: bool = True, jitter: float = 0.0, balance: str = "switch") -> None:
        super().__init__()
        check_top_k(top_k, num_experts)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got temperature={temperature!r}")
        self.hidden, self.num_experts, self.top_k = hidden, num_experts, top_k
        self.normalize_topk, self.jitter, self.balance = normalize_topk, jitter, balance
        self.weight = centroids(num_experts, hidden)            # (E, H) centroid directions
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @classmethod
    def from_spec(cls, hidden: int, spec: BlockSpec) -> Self:
        """The router an MoE block ``spec`` describes (see :class:`~moescope.moe.routers._common.BlockSpec`)."""
        return cls(hidden, spec.num_experts, spec.top_k, temperature=spec.temperature,
                   normalize_topk=spec.normalize_topk, balance=spec.balance)

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> RouterResult:
        """x (..., H) -> routing of the T = prod(...) tokens."""
        x = jitter(flat_tokens(x, self.hidden), self.jitter, self.training)
        cos = F.linear(F.normalize(fp32(x), dim=-1), F.normalize(fp32(self.weight), dim=-1))  # (T, E)
        logits = cos / self.log_temperature.exp().to(cos.dtype)
        probs = torch.softmax(logits, dim=-1)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        return softmax_result(logits, probs, indices, weights, balance=self.balance, attention_mask=attention_mask,
                              stats={"cosine": cos.detach()})
