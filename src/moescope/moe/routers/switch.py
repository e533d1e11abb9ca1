"""Switch Transformer top-1 routing with expert capacity (Fedus et al. 2021, §2.2).

Each token picks its argmax expert; each expert accepts at most C tokens in sequence order
and the rest are dropped: they get no expert output and the residual stream carries them
(index -1, weight 0 in the result). C = ceil(T/E · capacity_factor) over the group the
capacity applies to (the whole batch, or each sequence as in transformers'
``SwitchTransformersTop1Router``, which takes a fixed ``expert_capacity`` instead).
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
    centroids,
    check_positive,
    flat_tokens,
    fp32_linear,
    jitter,
    softmax_result,
)


class SwitchRouter(nn.Module):
    """Top-1 softmax router with capacity; combine weight = the chosen expert's probability.

    Args:
        hidden: H.
        num_experts: E.
        capacity_factor: C = ceil(T_group / E · capacity_factor); ignored if ``expert_capacity``;
            None: ``default_capacity_factor`` (1.25).
        expert_capacity: a fixed C per group (transformers' ``config.expert_capacity``).
        capacity_scope: ``"batch"`` (all T tokens form one group) or ``"sequence"`` (each row
            of a (B, S, H) input is its own group, as in transformers).
        bias: a router bias (transformers' ``router_bias``).
        jitter: multiplicative input noise in training (Switch used 1e-2).
        balance: load-balancing convention (``switch`` is the paper's).

    Causality (``causal``): a token's expert is the argmax of its own logits, and whether it is
    kept depends on how many tokens *before it in its group* chose the same expert. With
    ``capacity_scope="sequence"`` (what :meth:`from_spec` builds, and the lab uses) the group is
    the token's own sequence, so changing later tokens never changes an earlier token's routing.
    Two limits: C is computed from the sequence length, so a prefix routed alone (incremental
    decoding) can be given a different C than the full sequence; and with
    ``capacity_scope="batch"`` a row's first tokens compete with the previous row's last tokens,
    which is not causal per sequence.
    """

    scoring: ClassVar[str] = "softmax"            # scores: a softmax over the E experts
    causal: ClassVar[bool] = True                 # per sequence, in sequence order (see above)
    lab_name: ClassVar[str | None] = "switch"     # the lab's MoESpec.router
    default_capacity_factor: ClassVar[float] = 1.25  # Fedus et al. 2021, §2.2 and Table 1

    def __init__(self, hidden: int, num_experts: int, *, capacity_factor: float | None = None,
                 expert_capacity: int | None = None, capacity_scope: str = "batch", bias: bool = False,
                 jitter: float = 0.0, balance: str = "switch") -> None:
        super().__init__()
        check_positive(num_experts=num_experts, hidden=hidden)
        if capacity_factor is None:
            capacity_factor = self.default_capacity_factor
        if not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0; got capacity_factor={capacity_factor!r}")
        if expert_capacity is not None:
            check_positive(expert_capacity=expert_capacity)
        if capacity_scope not in ("batch", "sequence"):
            raise ValueError(f"capacity_scope must be 'batch' or 'sequence'; got {capacity_scope!r}")
        self.hidden, self.num_experts = hidden, num_experts
        self.capacity_factor, self.expert_capacity = capacity_factor, expert_capacity
        self.capacity_scope = capacity_scope
        self.jitter, self.balance = jitter, balance
        self.weight = centroids(num_experts, hidden)
        self.bias = nn.Parameter(torch.zeros(num_experts)) if bias else None

    @classmethod
    def from_spec(cls, hidden: int, spec: BlockSpec) -> Self:
        """The router an MoE block ``spec`` describes (see :class:`~moescope.moe.routers._common.BlockSpec`):
        capacity counted per sequence, in sequence order, so that it stays causal."""
        return cls(hidden, spec.num_experts, capacity_factor=spec.capacity_factor, capacity_scope="sequence",
                   balance=spec.balance)

    @property
    def max_experts_per_token(self) -> int:
        """1: top-1 (a dropped token gets none)."""
        return 1

    @property
    def mean_experts_per_token(self) -> float:
        """Expert evaluations per token on average: 1, an upper bound (dropped tokens use none)."""
        return 1.0

    def capacity(self, group_tokens: int) -> int:
        if self.expert_capacity is not None:
            return self.expert_capacity
        return math.ceil(group_tokens / self.num_experts * self.capacity_factor)

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> RouterResult:
        """x (T, H) or (B, S, H) -> routing of the flattened tokens."""
        group = x.shape[-2] if (self.capacity_scope == "sequence" and x.ndim >= 3) else None
        flat = jitter(flat_tokens(x, self.hidden), self.jitter, self.training)
        logits = fp32_linear(flat, self.weight, self.bias)
        probs = torch.softmax(logits, dim=-1)                                # (T, E)
        weight, choice = probs.max(dim=-1)                                   # (T,)
        tokens = flat.shape[0]
        group = group or tokens
        onehot = F.one_hot(choice, self.num_experts).view(tokens // group if group else 0, group, self.num_experts)
        position = torch.cumsum(onehot, dim=1).view(tokens, self.num_experts)  # 1-based rank in its expert
        kept = position.gather(1, choice.unsqueeze(1)).squeeze(1) <= self.capacity(group)
        indices = torch.where(kept, choice, -1).unsqueeze(1)                # (T, 1)
        weights = torch.where(kept, weight, 0.0).unsqueeze(1)
        return softmax_result(logits, probs, indices, weights, balance=self.balance, attention_mask=attention_mask,
                              balance_indices=choice.unsqueeze(1),  # what tokens asked for, dropped or not
                              stats={"drop_rate": (~kept).float().sum() / max(tokens, 1), "dropped": ~kept})
