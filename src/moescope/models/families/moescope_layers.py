"""moescope's own layers: :class:`~moescope.moe.layer.MoELayer` (any moescope router) and
:class:`~moescope.moe.soft.SoftMoELayer`, recognised by type (subclasses included).

An ``MoELayer`` returns an ``MoEOutput`` whose ``routing`` is the router's ``RouterResult``: the
recorder hooks the layer itself and reads it. The router describes itself: its class's
``scoring`` ("softmax" | "sigmoid") and its ``max_experts_per_token`` (k; 1 for Switch; E for
expert choice, which gives a token anywhere from 0 to E experts) are the view's ``scoring`` and
``top_k``; its optional ``bias``, ``selection_bias``, ``n_group`` and ``topk_group`` are copied.
Experts are moescope's stacked ``gate_up_proj`` (E, 2I, H) rows [gate; up] (ungated: up (E, I, H))
and ``down_proj`` (E, H, I); the shared expert a ``SharedExpert`` or ``DenseFFN``.

A ``SoftMoELayer`` has no router matrix: expert e's centroid is the mean of its S slot parameters
(exactly its slot when S = 1), ``scoring`` is "soft", ``top_k`` E, and the recorded scores are the
per-expert combine mass.

Not loaded from a directory (no model type, no on-disk layout): these layers live in moescope
models, saved however their owner saves them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from moescope.models.family import Family, Parts
from moescope.models.parts import check_expert, mlp, param, stacked
from moescope.models.readers import read_moescope
from moescope.models.view import ExpertWeights
from moescope.moe.experts import DenseFFN, Experts, SharedExpert
from moescope.moe.layer import MoELayer
from moescope.moe.soft import SoftMoELayer


def _experts(experts: Experts) -> Callable[[int], ExpertWeights]:
    if not experts.gated:
        def expert(e: int) -> ExpertWeights:
            check_expert(e, experts.num_experts)
            return ExpertWeights(up=experts.gate_up_proj[e].detach(), down=experts.down_proj[e].detach())

        return expert
    return stacked(experts.gate_up_proj, experts.down_proj, where="moescope Experts")


def _shared(shared: nn.Module | None) -> tuple[Callable[[], ExpertWeights], ...]:
    if shared is None:
        return ()
    ffn = shared.ffn if isinstance(shared, SharedExpert) else shared
    if not isinstance(ffn, DenseFFN):
        raise ValueError(f"unsupported shared expert {type(shared).__name__}; expected SharedExpert or DenseFFN")
    return (mlp(ffn, gate=None if ffn.gate_proj is None else "gate_proj"),)


def _routed(block: MoELayer, name: str) -> Parts:
    router = block.router
    scoring = getattr(type(router), "scoring", None)
    if scoring not in ("softmax", "sigmoid"):
        raise ValueError(f"{name}: router {type(router).__name__} does not declare its scoring (a class attribute "
                         f"'scoring', 'softmax' or 'sigmoid'; got {scoring!r})")
    top_k = router.max_experts_per_token  # k; 1 for Switch; E for expert choice (0 to E experts per token)
    return dict(family="moescope", num_experts=block.experts.num_experts, top_k=int(top_k), scoring=scoring,
                router_weight=router.weight.detach(), router_bias=param(getattr(router, "bias", None)),
                selection_bias=param(getattr(router, "selection_bias", None)),
                n_group=int(getattr(router, "n_group", 1)), topk_group=int(getattr(router, "topk_group", 1)),
                expert=_experts(block.experts), shared=_shared(block.shared))


def _soft(block: SoftMoELayer) -> Parts:
    e, s = block.num_experts, block.slots_per_expert
    centroid = block.slots.detach().t().reshape(e, s, block.hidden).mean(1)          # (E·S, H) -> (E, H)
    return dict(family="moescope", num_experts=e, top_k=e, scoring="soft", router_weight=centroid,
                expert=_experts(block.experts))


def adapt(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    """The view's parts of an ``MoELayer`` or a ``SoftMoELayer``."""
    return _soft(block) if isinstance(block, SoftMoELayer) else _routed(block, name)


FAMILY = Family(
    name="moescope", title="moescope MoELayer/SoftMoELayer", model_types=(), blocks=(MoELayer, SoftMoELayer),
    adapter=adapt, hook="", reader=read_moescope,
)
