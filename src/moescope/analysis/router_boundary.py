r"""How far a token's router input lies from a change of its first-choice expert: adversarial vs random.

The lecture's two halves joined. A router is a classifier of its input h (the hidden state the
block hands it) into E experts; the adversarial module measures, for any classifier, the distance
to the decision boundary along the adversarial direction (DeepFool's) and along random directions,
and holds their ratio against the law of a flat boundary in d dimensions (median √d / 0.6745,
:mod:`moescope.adversarial.boundary`). Here the classifier is the router's own score map —
``softmax(h Wᵀ + b)``, ``sigmoid(h Wᵀ + b) + selection bias``, or ``h Wᵀ + b + selection bias`` for the
sigmoid families whose top-k ranks the logits (the family's ``selection_logits``) — and the points are real tokens'
router inputs, captured on the model's own forward.

A linear router's first-choice regions are intersections of half-spaces, so each boundary face is
flat *by construction*: the ratio near the law says only that the nearest face dominates, and a ratio
far below it that several faces are close (near-ties). The measurement is used only where the score
map reproduces the block's recorded first choice on the captured tokens (at least 99% of them);
otherwise the layer is skipped with the reason (a router this formula does not describe).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moescope.adversarial.boundary import measure_boundary
from moescope.analysis.router_rewrite import router_module
from moescope.models import RoutingRecorder
from moescope.models.families import BY_NAME
from moescope.models.recorder import first_tensor
from moescope.models.view import MoELayerView

AGREEMENT = 0.99   # share of tokens whose best selection score must be among the experts the block chose


class RouterScores(nn.Module):
    """(N, H) router inputs -> (N, E) selection scores of ``view``'s linear router, in float32."""

    def __init__(self, view: MoELayerView) -> None:
        super().__init__()
        self.weight = view.router_weight.detach().float()
        self.bias = None if view.router_bias is None else view.router_bias.detach().float()
        self.selection_bias = None if view.selection_bias is None else view.selection_bias.detach().float()
        self.scoring = view.scoring
        family = BY_NAME.get(view.family)
        self.ranks_logits = family is not None and family.ranks_logits(view.scoring)

    def forward(self, h: Tensor) -> Tensor:
        z = h.float() @ self.weight.T
        if self.bias is not None:
            z = z + self.bias
        if self.scoring == "softmax":
            return z   # the logits order the experts as their softmax does
        s = z if self.ranks_logits else torch.sigmoid(z)
        return s + self.selection_bias if self.selection_bias is not None else s


def router_inputs(model: nn.Module, views: list[MoELayerView], ids: Tensor) -> tuple[dict[int, Tensor], list]:
    """Each view's router input (N, H) on ``ids`` (B, T) and the recorder's records of the same forward."""
    captured: dict[int, Tensor] = {}

    def keep(view: MoELayerView):
        def hook(module, args, kwargs):
            h = first_tensor(args, kwargs)
            if h is not None:
                captured[view.index] = h.detach().reshape(-1, h.shape[-1]).float().cpu()
        return hook

    handles = [router_module(v).register_forward_pre_hook(keep(v), with_kwargs=True) for v in views]
    try:
        with RoutingRecorder(model, views) as rec, torch.no_grad():
            rec.set_batch(ids, torch.ones_like(ids))
            model(input_ids=ids.to(next(model.parameters()).device))
            records = rec.pop()
    finally:
        for h in handles:
            h.remove()
    return captured, records


def router_boundary(model: nn.Module, views: list[MoELayerView], ids: Tensor, *, points: int = 64,
                    directions: int = 20, seed: int = 0) -> list[dict]:
    """Per view: the boundary summary (:meth:`BoundaryDistances.summary`) of ``points`` tokens, or the reason
    it was skipped."""
    captured, records = router_inputs(model, views, ids)
    by_layer = {r.layer: r for r in records}
    out = []
    for view in views:
        h, rec = captured.get(view.index), by_layer.get(view.index)
        if h is None or rec is None or view.scoring not in ("softmax", "sigmoid") or h.shape[0] != rec.indices.shape[0]:
            out.append({"layer": view.index, "skipped": "the router's input was not captured token by token"})
            continue
        scores = RouterScores(view)
        with torch.no_grad():
            first = scores(h).argmax(dim=-1)
        agreement = float((rec.indices == first.unsqueeze(1)).any(dim=1).float().mean())  # among the chosen
        if agreement < AGREEMENT:
            out.append({"layer": view.index, "agreement": agreement,
                         "skipped": f"the linear score map reproduces only {agreement:.0%} of the recorded first "
                                    f"choices ({view.family} routes by more than it)"})
            continue
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(h.shape[0], generator=gen)[:points]
        summary = measure_boundary(scores, h[pick], n_directions=directions, generator=gen).summary(seed=seed)
        out.append({"layer": view.index, "agreement": agreement, **summary})
    return out
