"""The report of ``moescope sphere``: four figures, ``results.json`` and ``report.html``.

Only renders what :func:`moescope.lab.sphere_laws.run_sphere` measured; it computes nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from moescope.report.figures import new_figure, png_bytes
from moescope.report.writer import FigureSpecs, draw_figures, write_report


def _equator_figure(res: dict) -> bytes:
    fig, axes = new_figure()
    ax = axes[0, 0]
    curves = res["curves"]
    for i, (eps, mass) in enumerate(curves["band"].items()):
        color = f"C{i}"
        ax.plot(curves["d"], mass, color=color, label=f"exact, |x₁| ≤ {eps}")
        pts = [(r["d"], b) for r in res["per_dim"] for b in r["band"] if str(b["eps"]) == eps]
        ds = [d for d, _ in pts]
        mc = np.array([b["mc"] for _, b in pts])
        ci = np.array([b["ci"] for _, b in pts])
        label = f"Monte Carlo ({res['config']['samples']} points), 99% CI" if i == 0 else None
        ax.errorbar(ds, mc, yerr=[mc - ci[:, 0], ci[:, 1] - mc], fmt="o", color=color, ms=4,
                    capsize=2, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("P(|x₁| ≤ ε): mass of the equator band")
    ax.set_title("Almost all of S^(d−1) lies near the equator")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _cosine_figure(res: dict) -> bytes:
    per_dim = res["per_dim"]
    ncols = min(3, len(per_dim))
    nrows = math.ceil(len(per_dim) / ncols)
    fig, axes = new_figure(nrows, ncols, width=3.0 * ncols, height=2.4 * nrows)
    for ax in axes.flat[len(per_dim):]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, per_dim, strict=False):
        edges = np.array(r["cos_hist"]["edges"])
        ax.stairs(r["cos_hist"]["density"], edges, fill=True, alpha=0.4, color="C0", label="sampled pairs")
        ax.plot(r["cos_pdf"]["t"], r["cos_pdf"]["pdf"], color="C3", lw=1.2, label="exact density")
        ax.set_title(f"d = {r['d']}  (KS p = {r['ks_pvalue']:.2f})")
        ax.set_xlabel("cos θ")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Cosine between two random unit vectors: histogram over the exact law")
    return png_bytes(fig)


def _contrast_figure(res: dict) -> bytes:
    fig, axes = new_figure()
    ax = axes[0, 0]
    curves = res["curves"]
    ax.plot(curves["contrast_d"], curves["contrast_prediction"], color="C3",
            label="plug-in prediction from the exact distance law")
    ds = [r["d"] for r in res["per_dim"]]
    mean = [r["contrast"]["mean"] for r in res["per_dim"]]
    sd = [r["contrast"]["std"] for r in res["per_dim"]]
    ax.errorbar(ds, mean, yerr=sd, fmt="o", color="C0", capsize=2, label="Monte Carlo mean ± sd over queries")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("(D_max − D_min) / D_min")
    n = res["config"]["points_per_query"]
    ax.set_title(f"Relative distance contrast of {n} random points (Beyer et al. 1999)")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _shell_figure(res: dict) -> bytes:
    fig, axes = new_figure(1, 2, width=9.0, height=3.6)
    ax = axes[0, 0]
    curves = res["curves"]
    for eps, mass in curves["shell"].items():
        ax.plot(curves["d"], mass, label=f"within {eps} of the surface")
    ax.set_xscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("fraction of the unit ball's volume")
    ax.set_title("The ball's volume lives in a thin shell: 1 − (1 − ε)^d")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ds = [r["d"] for r in res["per_dim"]]
    ax.plot(ds, [r["gaussian_norm"]["within_1_exact"] for r in res["per_dim"]], "-", color="C3",
            label="exact (chi law)")
    ax.plot(ds, [r["gaussian_norm"]["within_1_mc"] for r in res["per_dim"]], "o", color="C0",
            label="Monte Carlo")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("dimension d")
    ax.set_ylabel("P(| ‖g‖ − √d | ≤ 1)")
    ax.set_title("Gaussian annulus: ‖g‖ within ±1 of √d")
    ax.legend(fontsize=7)
    return png_bytes(fig)


FIGURES: FigureSpecs = {
    "equator_band.png": ("Equator band mass vs d", _equator_figure),
    "cosine_histograms.png": ("Cosine histograms over the exact density", _cosine_figure),
    "distance_contrast.png": ("Relative distance contrast vs d", _contrast_figure),
    "shell_mass.png": ("Shell mass and Gaussian annulus vs d", _shell_figure),
}


def write_sphere_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the figures, ``results.json`` and ``report.html`` into ``out_dir``.

    Returns:
        The paths written, by kind ("report", "results", and one per figure name).
    """
    return write_report(results, draw_figures(FIGURES, results), "sphere.html.j2", out_dir, context={
        "log10_welch": lambda w: "no limit" if w is None else f"{math.log10(w):.2f}"})
