"""One view of an MoE layer, whatever family it comes from, and one record of its routing.

Analysis code reads models only through these two types:

* :class:`MoELayerView` — the static facts and weights of one MoE layer: its router weight
  (E×H, the "expert centroids"), router or selection bias, scoring, k, groups, and access to
  each expert's matrices and the shared experts, in moescope's orientation (rows index the
  output): gate (I×H), up (I×H), down (H×I).
* :class:`RoutingRecord` — what one MoE layer *actually* did on one forward pass: the experts
  that processed each token and their weights, and the full score distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

SCORINGS = ("softmax", "sigmoid", "sqrtsoftplus", "soft")  # sqrtsoftplus: √softplus(logit) (DeepSeek-V4)


@dataclass(frozen=True)
class ExpertWeights:
    """One expert's matrices; ``gate`` is None for non-gated (ReLU/GELU MLP) experts.

    Shapes: gate (I, H), up (I, H), down (H, I).
    """

    up: Tensor
    down: Tensor
    gate: Tensor | None = None

    def input_projection(self) -> Tensor:
        """(2I | I, H): the rows that read the token — gate and up stacked."""
        import torch

        return self.up if self.gate is None else torch.cat([self.gate, self.up], dim=0)


@dataclass(frozen=True)
class MoELayerView:
    """Static description of one MoE layer.

    Attributes:
        name: module path inside the model (e.g. ``model.layers.3.mlp``).
        index: position among the model's MoE layers (0-based).
        family: ``mixtral``, ``qwen2_moe``, ..., or ``moescope``.
        num_experts: E routed experts.
        top_k: k experts per token (1 for Switch; E for soft routing).
        scoring: ``softmax``, ``sigmoid`` or ``soft``.
        router_weight: (E, H) router matrix; row e is expert e's centroid.
        router_bias: (E,) bias added to the logits, or None.
        selection_bias: (E,) bias used only to select experts (DeepSeek-V3), or None.
        n_group, topk_group: group-limited routing (1, 1 when not used).
        expert: function e -> :class:`ExpertWeights` of routed expert e.
        shared: functions returning the shared experts' weights (empty if none).
        module: the layer's module in a live model, or None for a view read from disk.
    """

    name: str
    index: int
    family: str
    num_experts: int
    top_k: int
    scoring: str
    router_weight: Tensor
    expert: Callable[[int], ExpertWeights]
    router_bias: Tensor | None = None
    selection_bias: Tensor | None = None
    n_group: int = 1
    topk_group: int = 1
    shared: tuple[Callable[[], ExpertWeights], ...] = ()
    module: nn.Module | None = field(default=None, repr=False)

    @property
    def hidden(self) -> int:
        return self.router_weight.shape[-1]


@dataclass(frozen=True)
class RoutingRecord:
    """What one MoE layer did on one forward pass over B sequences of S tokens (T = B·S).

    Attributes:
        layer: the view's ``index``.
        indices: (T, k) int64 experts that actually processed each token; -1 = none.
        weights: (T, k) float32 their combine weights.
        scores: (T, E) float32 full score distribution (softmax probabilities or sigmoids).
        batch_shape: (B, S), to restore sequences (consecutive-token statistics).
        mask: (T,) bool, True for real tokens (padding excluded from every statistic).
        token_ids: (T,) int64 input ids, or None.
        selection: (T, E) float32 router logits, kept where the family's top-k ranks the logits (plus any
            selection bias) rather than ``scores`` — the sigmoid families whose family record has
            ``selection_logits`` (Llama 4, Kolibri-1, Cohere2-MoE in sigmoid mode); None elsewhere.
    """

    layer: int
    indices: Tensor
    weights: Tensor
    scores: Tensor
    batch_shape: tuple[int, int]
    mask: Tensor
    token_ids: Tensor | None = None
    selection: Tensor | None = None

    def ranked(self) -> Tensor:
        """(T, E) the values the family's top-k ranks, before any selection bias: ``selection`` where kept, else
        ``scores`` (softmax probabilities order the experts as the logits do)."""
        return self.scores if self.selection is None else self.selection

    def chosen(self) -> Tensor:
        """(T, E) bool: True where the token was processed by the expert (``indices``, -1 skipped)."""
        E = self.scores.shape[-1]
        hit = torch.zeros(self.indices.shape[0], E + 1, dtype=torch.bool, device=self.indices.device)
        hit.scatter_(1, torch.where(self.indices >= 0, self.indices, E), True)  # column E: "no expert"
        return hit[:, :E]
