"""Figures of claim 18 (mixture-of-curvature experts): rendered from
:func:`moescope.lab.curvature_experts.run_curvature_experts`'s dict, nothing recomputed."""

from __future__ import annotations

import numpy as np

from moescope.report.figures import new_figure, png_bytes


def _routing_figure(data: dict) -> bytes:
    """Per expert (every seed and layer): learnt curvature against the share of its routing mass from
    hierarchical tokens; per seed: the observed difference beside its label-shuffle null."""
    fig, axes = new_figure(1, 2, width=9.6, height=3.8)
    ax = axes[0, 0]
    for i, run in enumerate(data["runs"]):
        for lay in run["routing"]["layers"]:
            ax.scatter(lay["curvature"], lay["hier_share"], color=f"C{i}", s=28,
                       label=f"seed {run['seed']}" if lay is run["routing"]["layers"][0] else None)
    ax.set_xscale("log")
    ax.set_xlabel("learnt curvature magnitude c_e (space curvature −c_e)")
    ax.set_ylabel("share of the expert's routing mass\nfrom hierarchical tokens")
    ax.set_title("Experts: curvature vs hierarchical share", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for i, run in enumerate(data["runs"]):
        null = np.asarray(run["routing"]["null"])
        ax.scatter(np.full(null.size, i) + np.linspace(-0.15, 0.15, null.size), null, color="0.6", s=4)
        ax.scatter([i], [run["routing"]["diff"]], color="C3", s=40, zorder=3,
                   label="observed" if i == 0 else None)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(data["runs"])), [str(r["seed"]) for r in data["runs"]], fontsize=7)
    ax.set_xlabel("seed")
    ax.set_ylabel("weighted log c: hierarchical − flat")
    ax.set_title("Observed difference (red) and label-shuffle null (grey)", fontsize=9)
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _loss_figure(data: dict) -> bytes:
    """Training-loss curves (mean over seeds) and the paired held-out losses per seed."""
    fig, axes = new_figure(1, 2, width=9.6, height=3.6)
    ax = axes[0, 0]
    every = data["settings"]["log_every"]
    for key, label, color in (("curve_mice", "MiCE", "C3"), ("curve_twin", "Euclidean twin", "C0")):
        curves = np.asarray([r[key] for r in data["runs"]])
        steps = every * (np.arange(curves.shape[1]) + 1)
        ax.plot(steps, curves.mean(0), color=color, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats, mean over seeds)")
    ax.set_title("Training", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for m, t in zip(data["mice_loss"], data["twin_loss"], strict=True):
        ax.plot([0, 1], [t, m], color="0.5", marker="o")
    ax.set_xticks([0, 1], ["Euclidean twin", "MiCE"])
    ax.set_ylabel("held-out loss (nats)")
    ax.set_title("Held-out loss, one line per seed", fontsize=9)
    return png_bytes(fig)


FIGURES = {
    "curvature_experts_routing.png": ("Mixture-of-curvature experts: which experts hierarchical tokens use",
                                      _routing_figure),
    "curvature_experts_loss.png": ("Mixture-of-curvature experts against the Euclidean twin: loss", _loss_figure),
}
