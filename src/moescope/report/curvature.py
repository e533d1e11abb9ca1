"""The report of ``moescope curvature``: figures, ``results.json`` and a self-contained ``report.html``.

Only renders what :func:`moescope.lab.curvature.run_curvature` measured; it computes nothing
beyond plot coordinates (the unit circle, bar offsets).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from moescope.report.figures import new_figure, png_bytes
from moescope.report.writer import FigureSpecs, draw_figures, write_report

_CIRCLE = np.linspace(0, 2 * np.pi, 361)


def _volume_figure(res: dict) -> bytes:
    fig, axes = new_figure()
    ax = axes[0, 0]
    v = res["volume"]
    ax.plot(v["r"], v["tree_nodes"], "o-", color="C2", label="ternary tree: nodes within r hops")
    ax.plot(v["r_fine"], v["area_h2"], color="C3", label="H²: area of a disk of radius r, 2π(cosh r − 1)")
    ax.plot(v["r_fine"], v["area_e2"], color="C0", label="E²: area of a disk of radius r, πr²")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.1)
    ax.set_xlabel("radius r")
    ax.set_ylabel("volume (log scale)")
    ax.set_title("Volume grows exponentially in a tree and in H², polynomially in E²")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _draw_disk(ax, disk: dict, *, color_by: list | None, title: str) -> None:
    ax.plot(np.cos(_CIRCLE), np.sin(_CIRCLE), color="0.5", lw=0.8)
    for line in disk["edges"]:
        xy = np.asarray(line)
        ax.plot(xy[:, 0], xy[:, 1], color="0.35", lw=0.6)
    pts = np.asarray(disk["points"])
    if color_by is None:
        ax.scatter(pts[:, 0], pts[:, 1], color="C0", s=12, zorder=3)
    else:
        ax.scatter(pts[:, 0], pts[:, 1], c=color_by, cmap="viridis", s=12, zorder=3)
    ax.set_aspect("equal")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.axis("off")
    ax.set_title(title, fontsize=8)


def _disk_figure(res: dict) -> bytes:
    learned = [g for g in res["graphs"] if g["product_disk"] is not None]
    ncols = 2 + len(learned)
    fig, axes = new_figure(1, ncols, width=3.2 * ncols, height=3.6)
    sk = res["sarkar"]["figure"]
    _draw_disk(axes[0, 0], sk, color_by=sk["depth"],
               title=f"Sarkar: {sk['graph'].split(' (')[0]}\nτ = {sk['tau']:.2f}, worst-case distortion "
                     f"{sk['worst_exact']:.3f}")
    _draw_disk(axes[0, 1], sk["recentred"], color_by=sk["depth"],
               title=f"the same, moved by an isometry\nthat centres node {sk['recentred']['node']} (depth 2)")
    for ax, g in zip(axes[0, 2:], learned, strict=True):
        row = next(r for r in g["rows"] if r["kind"] == "product")
        _draw_disk(ax, g["product_disk"], color_by=None,
                   title=f"learned {row['pretty']}: H² factor, {g['name']}\n"
                         f"average distortion {row['avg_distortion']:.4f}")
    fig.suptitle("Graphs in the Poincaré disk (edges drawn as geodesics)")
    return png_bytes(fig)


def _distortion_figure(res: dict) -> bytes:
    graphs = res["graphs"]
    fig, axes = new_figure(1, len(graphs), width=3.3 * len(graphs), height=3.4)
    for ax, g in zip(axes[0], graphs, strict=True):
        labels = [r["pretty"] for r in g["rows"]]
        x = np.arange(len(labels))
        ours = [r["avg_distortion"] for r in g["rows"]]
        ax.bar(x - 0.2, ours, width=0.4, color="C0", label="this run")
        if g["gu_winner"] is not None:
            ax.bar(x + 0.2, [r["gu"] for r in g["rows"]], width=0.4, color="C1", label="Gu et al. 2019")
        ax.set_xticks(x, labels)
        ax.set_title(f"{g['name']} ({g['n']} nodes)")
        ax.set_ylabel("average distortion")
        ax.legend(fontsize=7)
    fig.suptitle("Average distortion by space (lower is better)")
    return png_bytes(fig)


def _precision_figure(res: dict) -> bytes:
    sweeps = res["sarkar"]["sweeps"]
    fig, axes = new_figure(1, len(sweeps), width=4.2 * len(sweeps), height=3.4)
    for ax, s in zip(axes[0], sweeps, strict=True):
        depth = [r["depth"] for r in s["rows"]]
        exact = [(r["depth"], r["exact"]) for r in s["rows"] if r["exact"] is not None]
        if exact:
            ax.plot(*zip(*exact, strict=True), "k-", lw=1.5, label="exact (mpmath)")
        for name, marker in (("float32", "s"), ("float64", "o")):
            pts = [(r["depth"], r[name]["worst"]) for r in s["rows"] if r[name]["worst"] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker, ls="--", ms=4, label=f"rounded to {name}")
        ax.axhline(1 + s["eps"], color="C3", lw=0.8, label=f"1 + ε = {1 + s['eps']:g}")
        ax.set_xticks(depth)
        ax.set_xlabel(f"depth (radius = {s['tau']:.2f} · depth)")
        ax.set_ylabel("worst-case distortion")
        ax.set_title(f"binary trees, ε = {s['eps']:g}; missing = points rounded onto the circle", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Sarkar's construction: where float32 and float64 stop meeting 1 + ε")
    return png_bytes(fig)


def _curvature_figure(res: dict) -> bytes:
    graphs = res["graphs"]
    fig, axes = new_figure(1, len(graphs), width=3.3 * len(graphs), height=3.0)
    for ax, g in zip(axes[0], graphs, strict=True):
        h = g["curvature"]["hist"]
        ax.stairs(h["counts"], h["edges"], fill=True, alpha=0.6, color="C4")
        ax.axvline(0, color="0.4", lw=0.8)
        ax.set_xlabel("ξ(m; b, c)")
        ax.set_title(f"{g['name']}: mean {g['curvature']['mean']:.3f} → {g['suggested']['signature']}", fontsize=8)
    axes[0, 0].set_ylabel("angles")
    fig.suptitle("Discrete curvature of each graph (Gu et al. 2019): < 0 tree-like, > 0 cycle-like")
    return png_bytes(fig)


FIGURES: FigureSpecs = {
    "volume_growth.png": ("Volume growth: tree vs hyperbolic vs Euclidean", _volume_figure),
    "poincare_disk.png": ("The tree in the Poincaré disk: Sarkar's construction and learned embeddings", _disk_figure),
    "distortion.png": ("Average distortion by space, this run beside Gu et al. 2019", _distortion_figure),
    "sarkar_precision.png": ("Worst-case distortion of Sarkar's construction by depth and dtype", _precision_figure),
    "graph_curvature.png": ("Discrete curvature estimates per graph", _curvature_figure),
}


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def write_curvature_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the figures, ``results.json`` and ``report.html`` into ``out_dir``.

    Returns:
        The paths written, by kind ("report", "results", and one per figure name).
    """
    return write_report(results, draw_figures(FIGURES, results), "curvature.html.j2", out_dir,
                        context={"fmt": _fmt})
