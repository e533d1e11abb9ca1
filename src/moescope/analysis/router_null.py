r"""The untrained-router null: the trained model with its router rows replaced by random directions.

Claims about what a router *learned* (domain specialisation, activation patterns, routing by
angle) must be held against what the same model does with a router that learned nothing. Chance
(1/E) is not that null: the hidden states already carry the tokens' identity, so even a random
router sends different domains to different experts and repeats experts on repeated tokens.
The null keeps everything but the router's directions — the model's own hidden states on the
same text, each router row's norm — and draws each row's direction uniformly on the sphere,
``draws`` times (Mardia & Jupp 2000: a normalised Gaussian vector is uniform on S^{H−1}).

:func:`random_router_rows` swaps the rows in place for the duration of a ``with`` block and
restores them afterwards, also on error. The lab's models and a user's checkpoint use this one
definition (``moescope lab`` and ``moescope lab --model``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.models.view import MoELayerView

__all__ = ["DEFAULT_DRAWS", "angle_agreement_top1", "random_router_rows", "router_scalars", "swappable"]

DEFAULT_DRAWS = 40   # >= 39: with one model the 95% interval is an order statistic of the draws (stats.py)


def swappable(model: nn.Module, views: Sequence[MoELayerView]) -> bool:
    """Whether every view's router matrix is the model's own parameter storage (so swapping it routes)."""
    live = {p.data_ptr() for p in model.parameters()}
    return all(v.router_weight.data_ptr() in live for v in views)


@contextmanager
def random_router_rows(views: Sequence[MoELayerView], generator: torch.Generator) -> Iterator[None]:
    """Within the block, every router row e is ``||c_e|| · u_e`` with u_e uniform on the unit sphere.

    The views' ``router_weight`` must share storage with the live parameters (:func:`swappable`).
    """
    saved = [v.router_weight.clone() for v in views]
    try:
        with torch.no_grad():
            for v in views:
                w = v.router_weight
                direction = F.normalize(torch.randn(w.shape, generator=generator, dtype=torch.float32), dim=-1)
                w.copy_((direction * w.float().norm(dim=-1, keepdim=True)).to(w.dtype))
        yield
    finally:
        with torch.no_grad():
            for v, w in zip(views, saved, strict=True):
                v.router_weight.copy_(w)


def angle_agreement_top1(x: Tensor, router: Tensor, bias: Tensor | None = None) -> float:
    """Share of tokens whose top-1 of x·c_e (+ b) equals their top-1 of cos(x, c_e).

    Args:
        x: (T, H) router inputs; router: (E, H) rows c_e; bias: (E,) or None.
    """
    x = x.reshape(-1, x.shape[-1]).float()
    c = router.float()
    dot = x @ c.t() + (0 if bias is None else bias.float())
    cos = F.normalize(x, dim=-1) @ F.normalize(c, dim=-1).t()
    return float((dot.argmax(-1) == cos.argmax(-1)).float().mean()) if x.shape[0] else float("nan")


def router_scalars(views: Sequence[MoELayerView], summaries: Sequence[dict], inputs: Sequence[Tensor]) -> list[dict]:
    """Per MoE layer, the four numbers the router nulls compare (claims 11, 13, 14).

    Args:
        views: the layers; summaries: their :class:`~moescope.analysis.routing.RoutingStats` summaries by domain;
        inputs: per layer the (T, H) router inputs of the same pass.

    Returns:
        ``nmi`` (domain ↔ expert), ``repetition`` (first-choice repetition / uniform), ``router_entropy``
        (normalised) and ``angle_top1`` (:func:`angle_agreement_top1` with the layer's current rows).
    """
    return [{"nmi": lay["domains"]["nmi"],
             "repetition": lay["repetition"]["first"] / lay["repetition"]["uniform_first"],
             "router_entropy": lay["router_entropy"],
             "angle_top1": angle_agreement_top1(x, v.router_weight, v.router_bias)}
            for v, lay, x in zip(views, summaries, inputs, strict=True)]
