r"""Routing under a small push of the input embeddings: FGSM against random noise of the same size.

The objective is every MoE layer's router cross entropy against its current first choice (on each
router's own score map, :class:`~moescope.analysis.router_boundary.RouterScores`), summed over the
layers and tokens: one attack on all the routers at once, so its cost does not grow with depth. One
step of FGSM moves the input embeddings by ε·rms·sign(∇), with ε in units of the embeddings' RMS value
and no clamping; the control moves them by ε·rms·(random signs), the same L∞ and L2 size. What is
counted is the share of tokens whose set of k experts *actually chosen by the block* at each layer
changes (the recorder, on the model's own forward from the perturbed embeddings), with a
Clopper–Pearson interval that treats tokens as independent (they share sequences, so it is narrower
than the truth). The lecture's claim, for routers: a step along the gradient's sign moves routing far
more than a random step of the same size.

Hugging Face models only (the forward must take ``inputs_embeds``); the gradient's forward stops at
the last router, so the layers above it are not run for it.
"""

from __future__ import annotations

import torch
from scipy import stats as st
from torch import Tensor, nn

from moescope.analysis.router_boundary import RouterScores
from moescope.analysis.router_rewrite import router_module
from moescope.models import RoutingRecorder
from moescope.models.recorder import first_tensor
from moescope.models.view import MoELayerView

EPSILONS = (0.01, 0.03, 0.1, 0.3)
LEVEL = 0.95


class _Stop(Exception):
    """Raised inside the forward once the last router input is captured: the layers above are not needed."""


class RouterFromEmbeddings(nn.Module):
    """(B, T, H) input embeddings -> (L·B·T, E) selection scores of the ``views``' routers (layer-major),
    differentiable; the forward stops at the last of them."""

    def __init__(self, model: nn.Module, views: list[MoELayerView]) -> None:
        super().__init__()
        self.model, self.views = model, views
        self.scores = nn.ModuleList(RouterScores(v) for v in views)

    def forward(self, x: Tensor) -> Tensor:
        captured: dict[int, Tensor] = {}

        def keep(i: int):
            def hook(module, args, kwargs):
                captured[i] = first_tensor(args, kwargs)
                if len(captured) == len(self.views):
                    raise _Stop
            return hook

        handles = [router_module(v).register_forward_pre_hook(keep(i), with_kwargs=True)
                   for i, v in enumerate(self.views)]
        try:
            self.model(inputs_embeds=x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(captured) != len(self.views):
            raise ValueError("not every router of the layers ran on these embeddings")
        return torch.cat([self.scores[i](captured[i].reshape(-1, captured[i].shape[-1]))
                          for i in range(len(self.views))])


def fgsm_step(f: nn.Module, x: Tensor, target: Tensor, size: float) -> Tensor:
    """x + size·sign(∇ₓ Σ CE(f(x), target)), no clamping."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(f(x), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return (x + size * grad.sign()).detach()


def _chosen(model: nn.Module, views: list[MoELayerView], ids: Tensor, embeds: Tensor) -> dict[int, Tensor]:
    """Each layer's (B·T, E) bool mask of the experts the block chose, on the forward from ``embeds``."""
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        rec.set_batch(ids, torch.ones_like(ids))
        model(inputs_embeds=embeds)
        return {r.layer: r.chosen() for r in rec.pop()}


def router_flips(model: nn.Module, views: list[MoELayerView], ids: Tensor, *, epsilons=EPSILONS,
                 seed: int = 0) -> list[dict]:
    """Per layer and ε: the share of tokens whose chosen experts change under FGSM and under random signs.

    One attack for all layers: the objective sums every layer's router cross entropy against its current
    first choice, so the cost is one backward and two forwards per ε whatever the depth.
    """
    if not hasattr(model, "get_input_embeddings"):
        raise ValueError(f"{type(model).__name__} takes no inputs_embeds; router flips need a Hugging Face model")
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids.to(next(model.parameters()).device)).float()
    rms = float(embeds.pow(2).mean().sqrt())
    dtype = next(model.parameters()).dtype
    clean = _chosen(model, views, ids, embeds.to(dtype))
    f = RouterFromEmbeddings(model, views)
    with torch.no_grad():
        target = f(embeds.to(dtype)).argmax(dim=-1)
    gen = torch.Generator().manual_seed(seed)
    sweeps: dict[int, list[dict]] = {v.index: [] for v in views}
    for eps in epsilons:
        size = eps * rms
        noise = torch.randint(0, 2, embeds.shape, generator=gen).float() * 2 - 1
        rows: dict[int, dict] = {v.index: {"epsilon": eps} for v in views}
        for name, moved in (("fgsm", fgsm_step(f, embeds.to(dtype), target, size)), ("random", embeds + size * noise)):
            chosen = _chosen(model, views, ids, moved.to(dtype))
            for v in views:
                changed = (chosen[v.index] != clean[v.index]).any(dim=1)
                n, k = int(changed.numel()), int(changed.sum())
                ci = st.binomtest(k, n).proportion_ci(LEVEL, method="exact")
                rows[v.index][name] = {"share": k / n, "interval": [float(ci.low), float(ci.high)], "tokens": n}
        for index, row in rows.items():
            sweeps[index].append(row)
    return [{"layer": v.index, "rms": rms, "sweep": sweeps[v.index]} for v in views]
