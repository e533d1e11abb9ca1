"""Measure the lab's trained models: routing on held-out text and weight geometry.

For one trained run (and optionally each of its kept checkpoints), routes the validation
windows of every domain through the model with a :class:`~moescope.models.RoutingRecorder`,
accumulates :class:`~moescope.analysis.routing.RoutingStats` by domain, records token ×
expert weights for a short sample per domain, and measures each MoE layer's weight geometry
(:func:`~moescope.analysis.weights.view_geometry`). Also the nulls the claims are held against:
random regroupings of each layer's hidden units (claims 6, 7, 10), random-direction routers on the
same hidden states (claims 11, 13, 14), a random drift as large as training's (claim 7), and how
many heads vs experts carry a token's output (claim 12).
"""

from __future__ import annotations

from pathlib import Path

import torch

from moescope.analysis.expert_null import grouping_null, hidden_units, view_grouping_null
from moescope.analysis.router_null import DEFAULT_DRAWS, random_router_rows, router_scalars
from moescope.analysis.routing import RoutingStats
from moescope.analysis.weights import view_geometry
from moescope.lab.checkpoint import load_weights
from moescope.lab.model import TinyLM
from moescope.lab.train import RunResult, RunSpec
from moescope.models import RoutingRecorder, find_moe_layers

SAMPLE_TOKENS = 32        # tokens per domain in the token x expert heatmaps
MAX_WINDOWS = 64          # validation windows per domain routed for the statistics
NULL_WINDOWS = 16         # windows per domain routed by the trained router and by each random router (same text)
# Regroupings of the hidden units. The lab's rules read each seed's ratio to the null *mean* and take the
# interval over seeds, so the draws only need to pin that mean (null sd ~1%: 100 draws give ±0.1%);
# a single checkpoint (lab --model) takes its interval from the draws themselves and uses 200.
EXPERT_NULL_DRAWS = 100   # a final model (claims 6, 10)
DYNAMICS_DRAWS = 60       # the first and last checkpoints of a trajectory (claim 7's rule reads those)
FIGURE_DRAWS = 30         # the checkpoints in between (drawn in the figure only), and each random drift
DRIFTS = 3                # random drifts averaged in claim 7's no-learning control
SHARE = 0.9               # claim 12: how many heads / experts carry this share of a token's output norm


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
                         vocab_size=model.cfg.vocab_size, selection_bias=[v.selection_bias for v in views])
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


def expert_nulls(model: TinyLM, *, draws: int = EXPERT_NULL_DRAWS, seed: int = 0,
                 ranks: list[int] | None = None) -> list[dict]:
    """Per MoE layer, the routed experts' overlap against random regroupings of their hidden units.

    :func:`~moescope.analysis.expert_null.grouping_null`; ``ranks`` fixes r per layer (a trajectory
    compares checkpoints at one rank), else each layer's energy rank. Layers with < 2 experts skipped.
    """
    views = [v for v in find_moe_layers(model) if v.num_experts >= 2]
    return [view_grouping_null(v, rank=None if ranks is None else ranks[i], draws=draws, seed=seed + i)
            for i, v in enumerate(views)]


def drift_null(first: TinyLM, last: TinyLM, ranks: list[int], *, drifts: int = DRIFTS, draws: int = FIGURE_DRAWS,
               seed: int = 0) -> list[float]:
    """Claim 7's no-learning control: the expert overlap after a random drift as large as training's.

    Every hidden unit of the first checkpoint moves by as much as it moved in training, in a uniformly
    random direction (its gate and up rows together). From experts that start as copies (an upcycled
    start) any drift lowers their similarity; training separates the experts only if it lowers it more.
    Returns, per MoE layer, the mean over ``drifts`` draws of the drifted experts' overlap ratio to their
    own permutation null, at the same ranks.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, (a, b) in enumerate(zip(find_moe_layers(first), find_moe_layers(last), strict=True)):
        u0, u1 = hidden_units(a), hidden_units(b)                                       # (E, I, m, H)
        step = (u1 - u0).flatten(2).norm(dim=-1)                                        # (E, I)
        ratios = []
        for _ in range(drifts):
            direction = torch.nn.functional.normalize(torch.randn(u0.flatten(2).shape, generator=gen,
                                                                  dtype=u0.dtype), dim=-1)
            drifted = u0 + (direction * step[..., None]).view_as(u0)
            ratios.append(grouping_null(drifted, rank=ranks[i], draws=draws, seed=seed + i)["ratio"])
        out.append(sum(ratios) / len(ratios))
    return out


def dense_split_null(model: TinyLM, groups: int, *, draws: int = EXPERT_NULL_DRAWS, seed: int = 0) -> list[dict]:
    """The control of claim 6: each dense FFN's hidden units dealt into ``groups`` fixed random groups.

    A dense FFN has no experts, so its random grouping must look like any other random grouping:
    ratio ≈ 1 against the permutation null.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, block in enumerate(model.blocks):
        ffn = block.ffn
        units = torch.stack([ffn.gate_proj.weight.detach(), ffn.up_proj.weight.detach()], dim=1).double()  # (I, 2, H)
        n = units.shape[0] // groups
        perm = torch.randperm(units.shape[0], generator=gen)[: n * groups]
        out.append(grouping_null(units[perm].reshape(groups, n, 2, -1), draws=draws, seed=seed + i))
    return out


def router_null(model: TinyLM, val: dict[str, torch.Tensor], *, draws: int = DEFAULT_DRAWS, seed: int = 0) -> dict:
    """Routing scalars of the trained router and of ``draws`` random routers, on the same windows.

    Per MoE layer: ``nmi`` (domain ↔ expert), ``repetition`` (first-choice repetition / uniform),
    ``router_entropy`` (normalised) and ``angle_top1`` (how often top-1 of cos(x, c) equals top-1 of
    x·c). The random routers keep every row's norm and draw its direction uniformly
    (:func:`~moescope.analysis.router_null.random_router_rows`): the null of claims 11, 13 and 14.
    """
    views = find_moe_layers(model)
    layers = model.moe_layers()
    windows = {d: _windows(t, model.cfg.seq_len, NULL_WINDOWS) for d, t in val.items()}
    inputs: dict[int, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, kw, i=i: inputs.setdefault(i, []).append(args[0].detach()),
                                         with_kwargs=True) for i, m in enumerate(layers)]

    def measure() -> list[dict]:
        stats = RoutingStats([v.num_experts for v in views], [v.top_k for v in views], domains=tuple(windows))
        inputs.clear()
        with RoutingRecorder(model, views) as rec, torch.no_grad():
            for domain, wins in windows.items():
                model(wins)
                for r in rec.pop():
                    stats.update(r, domain)
        return router_scalars(views, stats.summaries(),
                              [torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[i]]) for i in range(len(views))])

    try:
        observed = measure()
        gen = torch.Generator().manual_seed(seed)
        null = []
        for _ in range(draws):
            with random_router_rows(views, gen):
                null.append(measure())
    finally:
        for h in hooks:
            h.remove()
    return {"observed": observed, "null": null, "windows_per_domain": NULL_WINDOWS,
            "kind": f"the trained model with every router row replaced by a random direction of the same norm "
                    f"({draws} draws, seed {seed})"}


def carrying_count(norms: torch.Tensor, share: float = SHARE) -> torch.Tensor:
    """(T, n) norms -> (T,) the fewest entries (heads, experts) whose norms sum to ``share`` of the total."""
    srt = norms.sort(-1, descending=True).values
    cum = srt.cumsum(-1) / srt.sum(-1, keepdim=True).clamp_min(1e-30)
    return ((cum < share).sum(-1) + 1).clamp_max(norms.shape[-1]).float()


def head_contributions(y: torch.Tensor, w_o: torch.Tensor, n_head: int) -> torch.Tensor:
    """(T, nh) norms of each head's contribution to the residual stream, y_h · W_o,hᵀ.

    y (..., nh·dv) the concatenated head outputs (the output projection's input); w_o (H, nh·dv).
    """
    y = y.reshape(-1, n_head, y.shape[-1] // n_head).float()                        # (T, nh, dv)
    wo = w_o.detach().float().view(w_o.shape[0], n_head, -1)                         # (H, nh, dv)
    return torch.einsum("thd,chd->thc", y, wo).norm(dim=-1)


def output_shares(model: TinyLM, val: dict[str, torch.Tensor], share: float = SHARE) -> dict:
    """Claim 12 measured on activations: how many heads vs experts carry ``share`` of a token's output.

    Per token and layer, the norms of each head's contribution to the residual stream
    (head output · its block of W_o) and of each routed expert's weighted output w_e·E_e(x); the
    fewest heads (experts) whose norms sum to ``share`` of the total, as a fraction of n_head (E).
    Returns ``head_fraction`` and ``expert_fraction`` (means over tokens and layers) per layer too.
    """
    nh = model.cfg.n_head
    head_in: dict[int, torch.Tensor] = {}
    moe_in: dict[int, torch.Tensor] = {}
    hooks = [b.attn.out_proj.register_forward_pre_hook(lambda mod, args, i=i: head_in.__setitem__(i, args[0].detach()))
             for i, b in enumerate(model.blocks)]
    hooks += [b.ffn.register_forward_pre_hook(lambda mod, args, kw, i=i: moe_in.__setitem__(i, args[0].detach()),
                                              with_kwargs=True) for i, b in enumerate(model.blocks)]

    heads, experts = [], []
    try:
        with torch.no_grad(), RoutingRecorder(model) as rec:
            for tokens in val.values():
                head_in.clear()
                moe_in.clear()
                model(_windows(tokens, model.cfg.seq_len, 8))
                for r in rec.pop():
                    i = r.layer
                    b = model.blocks[i]
                    contrib = head_contributions(head_in[i], b.attn.out_proj.weight, nh)       # (T, nh)
                    heads.append((i, carrying_count(contrib, share) / nh))
                    x = moe_in[i].reshape(-1, moe_in[i].shape[-1])
                    exp = b.ffn.experts
                    norms = torch.zeros(x.shape[0], exp.num_experts)
                    for e in range(exp.num_experts):
                        rows, slot = torch.nonzero(r.indices == e, as_tuple=True)
                        if rows.numel():
                            out = exp.expert(e, x[rows]) * r.weights[rows, slot, None]
                            norms[rows, e] = out.norm(dim=-1)
                    experts.append((i, carrying_count(norms, share) / exp.num_experts))
    finally:
        for h in hooks:
            h.remove()
    n_layers = len(model.moe_layers())
    per_head = [float(torch.cat([v for j, v in heads if j == i]).mean()) for i in range(n_layers)]
    per_expert = [float(torch.cat([v for j, v in experts if j == i]).mean()) for i in range(n_layers)]
    return {"share": share, "head_fraction": sum(per_head) / n_layers, "expert_fraction": sum(per_expert) / n_layers,
            "head_fraction_by_layer": per_head, "expert_fraction_by_layer": per_expert, "n_head": nh}


def measure_run(spec: RunSpec, result: RunResult, val: dict[str, torch.Tensor], *, dynamics: bool = False,
                null: bool = False, experts: bool = False, seed: int = 0) -> dict:
    """Everything the claims read from one run: final model routing + geometry, and per checkpoint.

    ``dynamics``: the weight geometry and the permutation-relative expert overlap (at the final
    checkpoint's rank) of every kept checkpoint (claim 7). ``null``: the random-router null
    (:func:`router_null`, claims 11, 13, 14), the angle agreement and the head/expert output shares
    (claim 12). ``experts`` (implied by ``dynamics``): the permutation null of the experts
    (:func:`expert_nulls`), or for a dense causal run the random split of its FFN (:func:`dense_split_null`).
    """
    steps = sorted(result.checkpoints)
    final = load_run(spec, result.checkpoints[steps[-1]])
    out = {"name": spec.name, "objective": spec.objective, "val_loss": result.val_loss,
           "val_loss_by_domain": result.val_loss_by_domain, "params_active": result.params_active,
           "params_total": result.params_total, "moe": bool(final.moe_layers())}
    experts = experts or dynamics
    if not out["moe"]:
        if experts and spec.objective == "causal":
            out["expert_null"] = dense_split_null(final, groups=spec.lm.moe.num_experts, seed=seed)
        return out
    out["routing"] = routing_measurements(final, val)
    out["weights"] = weight_measurements(final)
    if experts and spec.lm.moe.router != "soft":
        out["expert_null"] = expert_nulls(final, seed=seed)
    if null:
        out["router_null"] = router_null(final, val, seed=seed)
        out["output_shares"] = output_shares(final, val)
    if dynamics:
        ranks = [x["rank"] for x in out["expert_null"]]
        out["dynamics"] = []
        for s in steps:
            model = load_run(spec, result.checkpoints[s])
            draws = DYNAMICS_DRAWS if s in (steps[0], steps[-1]) else FIGURE_DRAWS
            out["dynamics"].append({"step": s, "weights": weight_measurements(model),
                                    "expert_null": expert_nulls(model, draws=draws, seed=seed, ranks=ranks)})
        out["drift_null"] = drift_null(load_run(spec, result.checkpoints[steps[0]]), final, ranks, seed=seed)
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
