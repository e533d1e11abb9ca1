"""Measure the lab's trained models: routing on held-out text and weight geometry.

For one trained run (and optionally each of its kept checkpoints), routes the validation
windows of every domain through the model with a :class:`~moescope.models.RoutingRecorder`,
accumulates :class:`~moescope.analysis.routing.RoutingStats` by domain, records token ×
expert weights for a short sample per domain, and measures each MoE layer's weight geometry
(:func:`~moescope.analysis.weights.view_geometry`). Also: how much of the dot-product
router's choice the angle alone reproduces (claim 11) and how many attention heads vs
experts act on each token (claim 12).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from moescope.analysis.routing import RoutingStats
from moescope.analysis.weights import view_geometry
from moescope.lab.checkpoint import load_weights
from moescope.lab.model import TinyLM
from moescope.lab.train import RunResult, RunSpec
from moescope.models import RoutingRecorder, find_moe_layers

SAMPLE_TOKENS = 32        # tokens per domain in the token x expert heatmaps
MAX_WINDOWS = 64          # validation windows per domain routed for the statistics


def load_run(spec: RunSpec, checkpoint: Path) -> TinyLM:
    model = TinyLM(spec.lm)
    load_weights(checkpoint, model)
    return model.eval()


def _windows(tokens: torch.Tensor, seq_len: int, limit: int) -> torch.Tensor:
    n = min(limit, tokens.numel() // seq_len)
    return tokens[: n * seq_len].view(n, seq_len)


def routing_measurements(model: TinyLM, val: dict[str, torch.Tensor], *, batch: int = 16) -> dict:
    """Routing statistics per MoE layer over the validation text, by domain; heatmap samples."""
    views = find_moe_layers(model)
    domains = tuple(val)
    stats = RoutingStats([v.num_experts for v in views], [v.top_k for v in views], domains=domains,
                         vocab_size=model.cfg.vocab_size)
    seq = model.cfg.seq_len
    samples = {}
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        for domain, tokens in val.items():
            wins = _windows(tokens, seq, MAX_WINDOWS)
            for i in range(0, wins.shape[0], batch):
                model(wins[i : i + batch])
                for r in rec.pop():
                    stats.update(r, domain)
            model(wins[:1, :SAMPLE_TOKENS])
            samples[domain] = {"tokens": wins[0, :SAMPLE_TOKENS].tolist(),
                               "weights": {r.layer: _dense(r) for r in rec.pop()}}
    return {"layers": stats.summaries(), "samples": samples}


def _dense(r) -> list[list[float]]:
    out = torch.zeros(r.indices.shape[0], r.scores.shape[-1])
    valid = r.indices >= 0
    out.scatter_(1, r.indices.clamp_min(0), torch.where(valid, r.weights.float(), 0.0))
    return out.tolist()


def weight_measurements(model: TinyLM) -> list[dict]:
    """view_geometry of every MoE layer (router centroids, expert subspaces, shared experts)."""
    return [view_geometry(v) for v in find_moe_layers(model)]


def angle_agreement(model: TinyLM, val: dict[str, torch.Tensor]) -> dict:
    """Share of the router's top-k (and top-1) choices that the angle alone reproduces.

    Captures each MoE layer's input x, and compares top-k of x·c_e (what a dot-product router
    computes) with top-k of cos(x, c_e): the norms of the centroids c_e are what the angle
    ignores. Random agreement of top-1 is 1/E.
    """
    layers = model.moe_layers()
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    handles = [m.register_forward_pre_hook(lambda mod, args, kw, i=i: inputs[i].append(args[0].detach()),
                                           with_kwargs=True) for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            for tokens in val.values():
                model(_windows(tokens, model.cfg.seq_len, 16))
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, m in enumerate(layers):
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[i]])
        c = m.router.weight.detach()
        k = getattr(m.router, "top_k", 1)
        dot, cos = x @ c.t(), F.normalize(x, dim=-1) @ F.normalize(c, dim=-1).t()
        top_dot, top_cos = dot.topk(k, -1).indices, cos.topk(k, -1).indices
        same_set = (torch.sort(top_dot, -1).values == torch.sort(top_cos, -1).values).all(-1).float().mean()
        same_first = (top_dot[:, 0] == top_cos[:, 0]).float().mean()
        norms = c.norm(dim=-1)
        out.append({"top1": float(same_first), "topk_set": float(same_set), "tokens": x.shape[0],
                    "chance_top1": 1.0 / c.shape[0], "centroid_norm_cv": float(norms.std() / norms.mean())})
    return {"layers": out}


def subspaces_used(model: TinyLM, val: dict[str, torch.Tensor]) -> dict:
    """Per token, the share of attention heads that contribute (all of them) vs of experts (k of E).

    A head "contributes" when its output for the token has a norm above 1e-6 of the largest
    head's; an expert when the token was dispatched to it with non-zero weight.
    """
    head_shares, expert_shares = [], []
    captured = []
    blocks = model.blocks
    hooks = [b.attn.c_proj.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
             for b in blocks]
    try:
        with torch.no_grad(), RoutingRecorder(model) as rec:
            for tokens in val.values():
                model(_windows(tokens, model.cfg.seq_len, 8))
                for r in rec.pop():
                    expert_shares.append(((r.indices >= 0) & (r.weights > 0)).sum(-1).float().mean().item()
                                         / r.scores.shape[-1])
    finally:
        for h in hooks:
            h.remove()
    nh = model.cfg.n_head
    for y in captured:  # (B, T, C) concatenated heads before the output projection
        heads = y.view(*y.shape[:-1], nh, -1).norm(dim=-1)                      # (B, T, nh)
        active = heads > 1e-6 * heads.amax(-1, keepdim=True)
        head_shares.append(active.float().mean().item())
    return {"head_share": sum(head_shares) / max(len(head_shares), 1),
            "expert_share": sum(expert_shares) / max(len(expert_shares), 1), "n_head": nh}


def measure_run(spec: RunSpec, result: RunResult, val: dict[str, torch.Tensor], *, dynamics: bool = False,
                null: bool = False) -> dict:
    """Everything the claims read from one run: final model routing + geometry, and per checkpoint.

    ``dynamics``: the weight geometry of every kept checkpoint (claim 7). ``null``: the routing
    statistics of the step-0 checkpoint, the untrained router claim 13 is held against.
    """
    steps = sorted(result.checkpoints)
    final = load_run(spec, result.checkpoints[steps[-1]])
    out = {"name": spec.name, "objective": spec.objective, "val_loss": result.val_loss,
           "val_loss_by_domain": result.val_loss_by_domain, "params_active": result.params_active,
           "params_total": result.params_total, "moe": bool(final.moe_layers())}
    if not out["moe"]:
        return out
    out["routing"] = routing_measurements(final, val)
    out["weights"] = weight_measurements(final)
    if null:
        init = load_run(spec, result.checkpoints[steps[0]])
        out["routing_null"] = {"layers": routing_measurements(init, val)["layers"],
                               "kind": f"the run's step-{steps[0]} checkpoint, before any training"}
    if dynamics:
        out["dynamics"] = [{"step": s, "weights": weight_measurements(load_run(spec, result.checkpoints[s]))}
                           for s in steps]
    return out


def soft_statistics(model: TinyLM, val: dict[str, torch.Tensor]) -> dict:
    """Soft MoE's dispatch/combine statistics (normalised entropies and maxima), mean over layers."""
    acc: dict[str, list[float]] = {}
    with torch.no_grad():
        for tokens in val.values():
            out = model(_windows(tokens, model.cfg.seq_len, 8))
            for r in out.routing or []:
                for k, v in r.stats.items():
                    if v.numel() == 1:
                        acc.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in acc.items()}
