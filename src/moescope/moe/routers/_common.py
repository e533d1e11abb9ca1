"""Pieces every router shares: the centroid matrix, argument checks, the result assembly, and the
:class:`BlockSpec` a router builds itself from."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.moe.losses import in_global_token_sums, load_balancing_loss, router_z_loss
from moescope.moe.result import LazyLosses, RouterResult, count_tokens


class BlockSpec(Protocol):
    """What a router's ``from_spec`` reads from the description of an MoE block.

    The lab's ``MoESpec`` is one (moe does not import it: layers import only downwards, so the
    router states the fields it needs and any object with them will do). Each router reads only
    the fields of its own family; ``capacity_factor`` None means the router's own default.
    """

    @property
    def num_experts(self) -> int: ...
    @property
    def top_k(self) -> int: ...
    @property
    def normalize_topk(self) -> bool: ...
    @property
    def balance(self) -> str: ...
    @property
    def capacity_factor(self) -> float | None: ...
    @property
    def n_group(self) -> int: ...
    @property
    def topk_group(self) -> int: ...
    @property
    def bias_update_rate(self) -> float: ...
    @property
    def temperature(self) -> float: ...


class TopKExperts:
    """Token-choice top-k routing: every token gets exactly its top ``k`` experts (``self.top_k``)."""

    top_k: int

    @property
    def max_experts_per_token(self) -> int:
        """k: every token gets exactly its top k experts."""
        return self.top_k

    @property
    def mean_experts_per_token(self) -> float:
        """Expert evaluations per token on average: k."""
        return float(self.top_k)


def check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")


def check_top_k(top_k: int, num_experts: int) -> None:
    check_positive(top_k=top_k, num_experts=num_experts)
    if top_k > num_experts:
        raise ValueError(f"top_k must be <= num_experts={num_experts}; got top_k={top_k}")


def centroids(num_experts: int, hidden: int) -> nn.Parameter:
    """(E, H) router weight: row e is expert e's centroid; nn.Linear's default init."""
    w = torch.empty(num_experts, hidden)
    nn.init.uniform_(w, -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))
    return nn.Parameter(w)


def fp32(x: Tensor) -> Tensor:
    """At least float32 for softmax/sigmoid (bf16/fp16 go up; float64 stays, for gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def fp32_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x Wᵀ + b in x's precision, at least float32, whatever the parameters' own dtype (transformers'
    Switch router keeps its classifier in float32 in a bfloat16 or float64 model)."""
    x = fp32(x)
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def flat_tokens(x: Tensor, hidden: int) -> Tensor:
    if x.shape[-1] != hidden:
        raise ValueError(f"router expects hidden size {hidden}; got input of shape {tuple(x.shape)}")
    return x.reshape(-1, hidden)


def jitter(x: Tensor, amount: float, training: bool) -> Tensor:
    """Multiplicative noise U(1 - amount, 1 + amount) on the router's input (Switch, eq. in §2.4)."""
    if training and amount > 0:
        return x * torch.empty_like(x).uniform_(1.0 - amount, 1.0 + amount)
    return x


def aux_losses(**thunks: Callable[[], Tensor]) -> Mapping[str, Tensor]:
    """A router's auxiliary losses from zero-argument functions: computed now where they can be
    trained on (gradients enabled) or must be all-reduced in step with the other ranks (inside
    :func:`moescope.moe.losses.global_token_sums`), else on first read. In inference nobody reads
    them as a rule, and on a 16-token batch they cost about half the router's time."""
    if torch.is_grad_enabled() or in_global_token_sums():
        return {name: thunk() for name, thunk in thunks.items()}
    return LazyLosses(thunks)


def softmax_result(logits: Tensor, probs: Tensor, indices: Tensor, weights: Tensor, *, balance: str,
                   attention_mask: Tensor | None, balance_indices: Tensor | None = None, **kw) -> RouterResult:
    """Assemble a result for a softmax router: load balance under ``balance`` and the z-loss.

    ``balance_indices`` (default ``indices``) are the choices the balance loss counts: the
    experts tokens asked for, which differ from those used when capacity drops tokens.
    """
    chosen = indices if balance_indices is None else balance_indices
    aux = aux_losses(
        load_balance=lambda: load_balancing_loss(probs, chosen, convention=balance, attention_mask=attention_mask),
        z_loss=lambda: router_z_loss(logits, attention_mask))
    return RouterResult(logits=logits, scores=probs, indices=indices, weights=weights,
                        tokens_per_expert=count_tokens(indices, logits.shape[-1]), aux_losses=aux, **kw)
