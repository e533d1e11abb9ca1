r"""Interventions on one routed expert, and the first-order estimate of removing it.

Two modes of taking expert *e* out of an MoE block, named as in the literature (used by
:func:`~moescope.analysis.ablation.ablate`):

* **re-route** (``"reroute"``): the expert's *selection* score is −∞, so the block chooses its
  top-k among the remaining experts with its own rule. The router's logit for *e* is set to −∞ on
  the first linear map inside the family's router module (the module the recorder hooks) whose
  output has E columns, and a selection bias (DeepSeek-V3, GLM-4-MoE, ...) for *e* is read as −∞
  in the forward (an edited copy, never written into the model, so that streamed and offloaded
  weights get it too), so that the corrected score that selects experts is −∞ too. Softmax routers
  then renormalise over the others exactly as the family does with a −∞ logit. With group-limited
  selection (DeepSeek-V3's n_group) a −∞ score can drop the expert's whole group when its group
  score sums that expert (groups of two): the family's own rule, applied as written.
* **zero** (``"zero"``): the expert's weighted output is removed and nothing else changes (the
  other experts keep their combine weights): its down projection (and a down bias, GPT-OSS) is
  zero for the forward.

**Attribution.** Scaling expert e's output by α, removing it is α: 1 → 0; to first order the zero-mode
change is −∂L/∂α = −⟨∂L/∂W_down, W_down⟩ (plus the down bias's term), so one forward and one backward
estimate every cell at once (:func:`attribution`). Removing a trained expert is far from infinitesimal; the
rank agreement of the two is reported
(:meth:`~moescope.analysis.ablation.AblationResult.rank_agreement`), not assumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from moescope.analysis.router_rewrite import rewriting_logits, saved
from moescope.analysis.window_loss import AblationError, forward_logits, per_window
from moescope.models.view import MoELayerView

MODES = ("reroute", "zero")


def _named_tensor(module: nn.Module, t: Tensor) -> str | None:
    """The name of ``module``'s parameter or buffer that ``t`` is (or views into), or None."""
    ptr = t.untyped_storage().data_ptr()
    for name, p in [*module.named_parameters(), *module.named_buffers()]:
        if p.device == t.device and p.untyped_storage().data_ptr() == ptr:
            return name
    return None


@contextmanager
def reroute(view: MoELayerView, expert: int) -> Iterator[None]:
    """Within the block: expert ``expert``'s selection score is −∞ (see the module docstring).

    The logit is −∞ in the router's linear map and, where the family has a selection bias, so is the
    bias *that the forward reads*: an edited copy replaces it inside the block's forward
    (:func:`~moescope.analysis.router_rewrite.rewriting_logits`), so the ablation is the same on a
    resident, a layer-streamed and an accelerate-offloaded model, and nothing in the model changes.
    """
    _check(view, expert)

    def mask(logits: Tensor) -> Tensor:
        logits[..., expert] = -math.inf
        return logits

    def drop(bias: Tensor) -> None:
        bias[expert] = -math.inf

    with rewriting_logits(view, mask, purpose="re-route ablation (use mode 'zero')", error=AblationError,
                          selection_bias=None if view.selection_bias is None else drop):
        yield


def _output_parts(view: MoELayerView, expert: int) -> list[tuple[nn.Parameter, Tensor]]:
    """Expert ``expert``'s output-side tensors: ``(parameter, the expert's view of it)`` for its down
    projection and, where the family has one, its down bias (GPT-OSS ``down_proj_bias``)."""
    _check(view, expert)
    down = view.expert(expert).down
    name = _named_tensor(view.module, down)
    if name is None:
        raise AblationError(f"{view.name}: expert {expert}'s down projection is not stored in a parameter of the "
                            f"{view.family} block (a converted or quantised copy?); it cannot be zeroed")
    owner = dict(view.module.named_parameters())
    parts = [(owner[name], down)]
    stem = name[: -len("weight")] + "bias" if name.endswith("weight") else name + "_bias"
    bias = owner.get(stem)
    if bias is not None:
        stacked = owner[name].dim() == 3 and bias.dim() == 2 and bias.shape[0] == view.num_experts
        parts.append((bias, bias.detach()[expert] if stacked else bias.detach()))
    return parts


@contextmanager
def zero(view: MoELayerView, expert: int) -> Iterator[None]:
    """Within the block: expert ``expert``'s down projection (and down bias) are zero."""
    targets = [v for _, v in _output_parts(view, expert)]
    with saved(*targets):
        with torch.no_grad():
            for t in targets:
                t.zero_()
        yield


INTERVENTIONS: dict[str, Callable[[MoELayerView, int], object]] = {"reroute": reroute, "zero": zero}


def _check(view: MoELayerView, expert: int) -> None:
    if view.module is None:
        raise AblationError(f"{view.name}: a view read from disk has no live module to ablate")
    if not isinstance(expert, int) or isinstance(expert, bool) or not 0 <= expert < view.num_experts:
        raise AblationError(f"{view.name}: expert must be an int in [0, {view.num_experts}); got {expert!r}")



def attribution(model: nn.Module, views: list[MoELayerView], experts: list[int], ids: Tensor,
                batch_size: int) -> np.ndarray:
    """First-order estimate of the zero-mode loss change of every (view, expert): (len(views), len(experts)).

    Scaling expert e's output by α, its removal is α: 1 → 0, so to first order
    Δloss ≈ −∂L/∂α = −⟨∂L/∂W, W⟩ − ⟨∂L/∂b, b⟩ over its down projection W and down bias b, with L the
    mean over ``ids``' windows of their mean token loss. One forward and one backward per batch give
    every expert of every layer at once (gradient × the expert's contribution).
    """
    parts = {(li, ei): _output_parts(v, e) for li, v in enumerate(views) for ei, e in enumerate(experts)}
    params = {id(p): p for plist in parts.values() for p, _ in plist}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in params)
            p.grad = None
        with torch.enable_grad():
            for chunk in ids.split(batch_size):
                logits = forward_logits(model, chunk)
                (per_window(logits, chunk).sum() / ids.shape[0]).backward()
        out = np.zeros((len(views), len(experts)))
        for (li, ei), plist in parts.items():
            total = 0.0
            for p, v in plist:
                if p.grad is None:  # the expert never ran on these windows: no gradient reached it
                    continue
                if p.grad.stride() != p.stride():
                    raise AblationError(f"{views[li].name}: the gradient of {tuple(p.shape)} has another memory "
                                        "layout than the weight; cannot read one expert's share")
                g = p.grad.as_strided(v.shape, v.stride(), v.storage_offset() - p.storage_offset())
                total += float((g.double() * v.double()).sum())
            out[li, ei] = -total
        return out
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
