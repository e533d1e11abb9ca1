"""Llama 4 routing: top-k on raw logits, sigmoid of the chosen logits, weights on the *input*.

Matches transformers' ``Llama4Router`` + ``Llama4TextMoe``: the router keeps the k largest
logits, passes them through a sigmoid (zero for the others), and the MoE multiplies each
expert's *input* by that score, expert(s · x), rather than its output; a shared expert is
always added (build the layer with ``shared=SharedExpert(...)``).
"""

from __future__ import annotations

from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.moe.losses import load_balancing_loss
from moescope.moe.result import RouterResult, count_tokens
from moescope.moe.routers._common import BlockSpec, TopKExperts, aux_losses, centroids, check_top_k, flat_tokens, fp32


class Llama4Router(TopKExperts, nn.Module):
    """Sigmoid-gated top-k on raw logits, applied to the expert input (k = 1 in Llama 4).

    ``load_balance`` (switch convention) takes P from the sigmoid scores normalised over
    experts, the way DeepSeek-V3's sequence-wise loss does for sigmoid routers.
    """

    scoring: ClassVar[str] = "sigmoid"            # scores: one sigmoid per expert
    causal: ClassVar[bool] = True                 # a token's choice depends on that token alone
    lab_name: ClassVar[str | None] = None         # the lab does not train it

    def __init__(self, hidden: int, num_experts: int, top_k: int = 1) -> None:
        super().__init__()
        check_top_k(top_k, num_experts)
        self.hidden, self.num_experts, self.top_k = hidden, num_experts, top_k
        self.weight = centroids(num_experts, hidden)

    @classmethod
    def from_spec(cls, hidden: int, spec: BlockSpec) -> Self:
        """The router an MoE block ``spec`` describes (see :class:`~moescope.moe.routers._common.BlockSpec`)."""
        return cls(hidden, spec.num_experts, spec.top_k)

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> RouterResult:
        """x (..., H) -> routing with ``weight_input=True``."""
        flat = flat_tokens(x, self.hidden)
        logits = F.linear(flat, self.weight)                             # (T, E), input dtype as in Llama 4
        top, indices = logits.topk(self.top_k, dim=-1)
        weights = torch.sigmoid(fp32(top))
        scores = torch.sigmoid(fp32(logits))
        normed = scores / scores.sum(-1, keepdim=True)
        aux = aux_losses(load_balance=lambda: load_balancing_loss(normed, indices, convention="switch",
                                                                  attention_mask=attention_mask))
        return RouterResult(logits=fp32(logits), scores=scores, indices=indices, weights=weights,
                            tokens_per_expert=count_tokens(indices, self.num_experts), aux_losses=aux,
                            weight_input=True)
