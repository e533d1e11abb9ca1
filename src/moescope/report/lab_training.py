"""Figures of the lab's training-based claims (6–15), drawn from the measured data only.

Each figure reads one experiment's data ``t``: the ``training`` experiment (the lab's runs) or
the ``checkpoint`` experiment of ``moescope lab --model`` (one run, named by ``t["baseline"]``,
that also holds the shared experts, ``t["shared_run"]``; its title names the checkpoint).
"""

from __future__ import annotations

import numpy as np

from moescope.report.figures import new_figure, png_bytes


def _base(t: dict) -> str:
    """The run the single-model figures draw: the lab's top-2 run, or the checkpoint's."""
    return t.get("baseline", "top2")


def _label(t: dict, default: str) -> str:
    model = t.get("model")
    return f"{model['family']} checkpoint ({model['path']})" if model else default


def _overlap(t: dict) -> bytes:
    fig, axes = new_figure()
    ax = axes[0, 0]
    base = t["runs"][_base(t)]["weights"]
    short = "model" if "model" in t else "top-2"
    ax.bar([f"{short} L{g['index']}" for g in base], [g["experts"]["z"] for g in base], color="C0",
           label=f"routed vs routed ({short})")
    shared_run = t.get("shared_run", "deepseek-moe")
    fine = t["runs"].get(shared_run, {}).get("weights", [])
    if shared_run != _base(t):
        ax.bar([f"fine L{g['index']}" for g in fine], [g["experts"]["z"] for g in fine], color="C1",
               label="routed vs routed (fine-grained)")
    ax.bar([f"shared L{g['index']}" for g in fine for _ in g["shared"]],
           [s["z"] for g in fine for s in g["shared"]], color="C2", label="shared vs routed")
    ax.axhspan(-3, 3, color="grey", alpha=0.2, label="random subspaces (|z| ≤ 3)")
    ax.set_ylabel("overlap z vs random-subspace null")
    ax.set_title(f"Expert subspace overlap against random subspaces\n{_label(t, 'the lab runs')}", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelrotation=30)
    return png_bytes(fig)


def _dynamics(t: dict) -> bytes:
    fig, axes = new_figure()
    ax = axes[0, 0]
    dyn = t["runs"]["top2"]["dynamics"]
    steps = [d["step"] for d in dyn]
    for j in range(len(dyn[0]["weights"])):
        ax.plot(steps, [d["weights"][j]["experts"]["mean_cos2_pairs"] for d in dyn], "o-", label=f"layer {j}")
        ax.plot(steps, [d["weights"][j]["experts"]["null_mean_cos2"] for d in dyn], "--", color="grey")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean cos² between expert subspaces")
    ax.set_title("Expert similarity over training (dashed: random-subspace null)")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _balance(t: dict) -> bytes:
    lays_b, lays_0 = t["runs"]["top2"]["routing"]["layers"], t["runs"]["top2-alpha0"]["routing"]["layers"]
    fig, axes = new_figure(1, len(lays_b), width=4.5 * len(lays_b), height=3.4)
    for j, ax in enumerate(axes[0]):
        e = np.arange(len(lays_b[j]["load"]))
        ax.bar(e - 0.2, lays_b[j]["load"], width=0.4, label="α = 0.01")
        ax.bar(e + 0.2, lays_0[j]["load"], width=0.4, label="α = 0")
        ax.axhline(1 / len(e), color="grey", ls="--", label="uniform")
        ax.set_xlabel("expert")
        ax.set_title(f"layer {j}: load share (CV {lays_b[j]['load_cv']:.2f} vs {lays_0[j]['load_cv']:.2f})")
    axes[0, 0].set_ylabel("share of routed assignments")
    axes[0, 0].legend(fontsize=7)
    return png_bytes(fig)


def _angle(t: dict) -> bytes:
    """Claim 11's numbers: per layer, the angle agreement of the trained router and of the random-direction
    routers with the same norms (their spread as an error bar), seed 0."""
    fig, axes = new_figure(width=5.0, height=3.4)
    ax = axes[0, 0]
    rn = t["runs"][_base(t)]["router_null"]
    x = np.arange(len(rn["observed"]))
    null = np.array([[draw[i]["angle_top1"] for draw in rn["null"]] for i in range(len(x))])   # (L, draws)
    lo, hi = np.quantile(null, [0.025, 0.975], axis=1)
    ax.bar(x - 0.2, [o["angle_top1"] for o in rn["observed"]], width=0.4, label="trained router")
    ax.bar(x + 0.2, null.mean(1), width=0.4, yerr=[null.mean(1) - lo, hi - null.mean(1)], color="C7",
           label="random directions, same norms (95% of draws)")
    ax.set_xticks(x, [f"layer {j}" for j in x])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("first choices the angle alone reproduces")
    ax.set_title(f"Routing by angle alone (cos) vs the dot-product router\n{_label(t, 'trained top-2 run, seed 0')}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return png_bytes(fig)


def _heads(t: dict) -> bytes:
    """Claim 12's numbers: the share of heads (and of experts) carrying 90% of a token's output, per seed or
    batch; with a checkpoint also the heads' read subspaces against the experts'."""
    shares = t["output_shares"]
    geo = (t.get("subspaces_used") or {}).get("geometry") or []
    fig, axes = new_figure(1, 2 if geo else 1, width=9.0 if geo else 4.5, height=3.4)
    ax = axes[0, 0]
    heads = [s["head_fraction"] for s in shares]
    experts = [s["expert_fraction"] for s in shares if s.get("expert_fraction") is not None]
    ax.bar(["attention heads", "experts"][: 2 if experts else 1],
           [float(np.mean(heads)) if heads else 0.0] + ([float(np.mean(experts))] if experts else []),
           color=["C0", "C1"][: 2 if experts else 1])
    for j, values in enumerate((heads, experts)):
        ax.scatter([j] * len(values), values, color="k", s=10, zorder=3)
    ax.axhline(t["top_k"] / t["num_experts"], color="grey", ls="--", label="k/E: the most experts can carry")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share carrying 90% of a token's output")
    ax.set_title("All heads at once vs the chosen experts" + ("" if heads else " (heads not measured)"), fontsize=9)
    ax.legend(fontsize=7)
    if geo:  # checkpoint: head read subspaces vs expert input subspaces, per MoE layer
        ax = axes[0, 1]
        x = np.arange(len(geo))
        ax.bar(x - 0.2, [g["query"]["vs_experts_z"] for g in geo], width=0.4, label="query heads vs experts")
        ax.bar(x + 0.2, [g["key_value"]["vs_experts_z"] for g in geo], width=0.4, label="key/value groups vs experts")
        ax.axhspan(-3, 3, color="grey", alpha=0.2, label="random subspaces (|z| ≤ 3)")
        ax.set_xticks(x, [f"L{g['index']}" for g in geo])
        ax.set_ylabel("overlap z vs random-subspace null")
        ax.set_title("Head subspaces vs expert subspaces", fontsize=9)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def _spread(n: int, at_most: int = 4) -> list[int]:
    """Up to ``at_most`` layer indices evenly spread over ``n`` (all when n ≤ at_most)."""
    return list(range(n)) if n <= at_most else sorted({round(i * (n - 1) / (at_most - 1)) for i in range(at_most)})


def _domains(t: dict) -> bytes:
    run = t["runs"][_base(t)]
    rows = [("trained router", run["routing"]["layers"])]
    if run.get("routing_null"):
        rows.append(("untrained router (the null)", run["routing_null"]["layers"]))
    shown = _spread(len(rows[0][1]))
    fig, axes = new_figure(len(rows), len(shown), width=4.5 * len(shown), height=2.6 * len(rows))
    for r, (label, lays) in enumerate(rows):
        for ax, j in zip(axes[r], shown, strict=True):
            d = lays[j]["domains"]
            im = ax.imshow(d["specialisation"], cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
            ax.set_yticks(range(len(d["names"])), d["names"])
            ax.set_xlabel("expert")
            ax.set_title(f"{label}, MoE layer {j}: (p − k/E)/(1 − k/E)", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    return png_bytes(fig)


def _heatmaps(t: dict) -> bytes:
    routing = t["runs"][_base(t)]["routing"]
    samples = routing["samples"]
    n = len(samples) + 1
    fig, axes = new_figure(1, n, width=3.6 * n, height=4.2)
    for ax, (domain, s) in zip(axes[0], samples.items(), strict=False):
        w = np.array(s["weights"][0])
        ax.imshow(w, cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_title(f"{domain}: token × expert (MoE layer 0)", fontsize=9)
        ax.set_xlabel("expert")
        ax.set_ylabel("token position")
    ax = axes[0, -1]  # layer x expert: each MoE layer's load over the whole text (layers may differ in E)
    loads = routing["layers"]
    width = max(len(lay["load"]) for lay in loads)
    grid = np.full((len(loads), width), np.nan)
    for j, lay in enumerate(loads):
        grid[j, : len(lay["load"])] = lay["load"]
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0)
    ax.set_yticks(range(len(loads)))
    ax.set_title("layer × expert: load share", fontsize=9)
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if "model" in t:
        fig.suptitle(_label(t, ""), fontsize=9)
    return png_bytes(fig)


def _quality(t: dict) -> bytes:
    fig, axes = new_figure()
    ax = axes[0, 0]
    for name, r in t["runs"].items():
        marker = "o" if r["objective"] == "causal" else "s"
        color = "C0" if r["objective"] == "causal" else "C3"
        ax.scatter(r["params_active"], r["val_loss"], marker=marker, color=color)
        ax.annotate(name, (r["params_active"], r["val_loss"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("active parameters per token")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Quality vs active compute\n(circles: causal LM; squares: masked-token objective, compared apart)")
    return png_bytes(fig)


FIGURES = {
    "expert_overlap.png": _overlap, "expert_similarity_dynamics.png": _dynamics, "balance_load.png": _balance,
    "angle_agreement.png": _angle, "heads_vs_experts.png": _heads, "domain_specialisation.png": _domains,
    "router_heatmaps.png": _heatmaps, "quality_vs_compute.png": _quality,
}
