"""The named results that routers and MoE layers return, so analysis reads, never re-derives."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class RouterResult:
    """What a router decided for T tokens over E experts.

    Attributes:
        logits: (T, E) raw router logits, before any activation (float32).
        scores: (T, E) the full score distribution the router used: softmax probabilities or
            sigmoid values (float32). Load-balancing losses take P_i from here.
        indices: (T, k) int64 experts that actually process each token, after biases, groups
            and capacity; -1 marks an empty slot (a token dropped by capacity, or an unused
            slot of an expert-choice router).
        weights: (T, k) combine weights of those experts (0 at empty slots).
        tokens_per_expert: (E,) int64 (token, expert) assignments actually dispatched.
        aux_losses: auxiliary losses by name, unscaled (the training loop picks coefficients);
            under ``torch.no_grad()`` computed when first read (:class:`LazyLosses`).
        weight_input: True when the weight scales the expert's *input* (Llama 4) instead of
            its output.
        stats: anything else the router measured (drop rate, soft dispatch statistics, ...).
    """

    logits: Tensor
    scores: Tensor
    indices: Tensor
    weights: Tensor
    tokens_per_expert: Tensor
    aux_losses: Mapping[str, Tensor] = field(default_factory=dict)
    weight_input: bool = False
    stats: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_experts(self) -> int:
        return self.logits.shape[-1]

    @property
    def top_k(self) -> int:
        return self.indices.shape[-1]


@dataclass(frozen=True)
class MoEOutput:
    """An MoE layer's output and the routing that produced it.

    Attributes:
        hidden: (..., H) the layer's output, same leading shape as its input.
        routing: the router's decisions for the flattened (T = prod(leading), H) tokens.
    """

    hidden: Tensor
    routing: RouterResult

    def aux_loss(self, coefficients: dict[str, float]) -> Tensor:
        """Σ coefficient · loss over the named auxiliary losses present (0 if none)."""
        total = self.hidden.new_zeros((), dtype=torch.float32)
        for name, coef in coefficients.items():
            if name in self.routing.aux_losses and coef:
                total = total + coef * self.routing.aux_losses[name]
        return total


def count_tokens(indices: Tensor, num_experts: int) -> Tensor:
    """(E,) int64 number of valid (index >= 0) assignments per expert.

    Empty slots (-1) are counted in a bin of their own and cut off, instead of masked out: a
    boolean mask costs a ``nonzero`` (a host sync and a copy) on every router call.
    """
    return torch.bincount(indices.reshape(-1) + 1, minlength=num_experts + 1)[1:]


class LazyLosses(Mapping[str, Tensor]):
    """Named losses, each computed (under ``torch.no_grad()``) the first time it is read."""

    def __init__(self, thunks: Mapping[str, Callable[[], Tensor]]) -> None:
        self._thunks = dict(thunks)
        self._values: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._values:
            thunk = self._thunks[name]                       # KeyError for an unknown name, as a dict
            with torch.no_grad():
                self._values[name] = thunk()
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._thunks)

    def __len__(self) -> int:
        return len(self._thunks)

    def __repr__(self) -> str:
        return f"LazyLosses({sorted(self._thunks)}, computed={sorted(self._values)})"

