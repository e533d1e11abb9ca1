"""The report of ``moescope attack``: figures, ``results.json`` and ``report.html``.

Only renders what :func:`moescope.adversarial.experiment.run_experiment` measured; it computes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from moescope.report.figures import new_figure, png_bytes
from moescope.report.writer import FigureSpecs, draw_figures, write_report

_ATTACK_STYLE = {"fgsm": ("C3", "o-"), "pgd": ("C0", "s-"), "noise": ("C7", "^--")}


def _nan(values: Sequence[float | None]) -> np.ndarray:
    """JSON's None (inf or undefined) as NaN, which matplotlib leaves out."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _accuracy_figure(res: dict) -> bytes:
    models = res["models"]
    fig, axes = new_figure(1, len(models), width=4.2 * len(models), height=3.6)
    digits = res["dataset"] == "digits"
    names = {"fgsm": "FGSM" if digits else "FGM", "pgd": f"PGD ({res['config']['pgd_steps']} steps)",
             "noise": "random-sign noise" if digits else "random direction"}
    for ax, (name, m) in zip(axes.flat, models.items(), strict=True):
        for attack, (color, style) in _ATTACK_STYLE.items():
            ax.plot(res["eps"], m["curves"][attack]["robust_accuracy"], style, color=color, ms=4,
                    label=names[attack])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"budget ε ({'L∞, pixels in [0, 1]' if digits else 'L2'})")
        ax.set_ylabel("accuracy under attack")
        ax.set_title(f"{name} (d={m['d']}, {m['points']} test points)")
        ax.legend(fontsize=7)
    fig.suptitle("Accuracy against the budget: gradient attacks vs random noise of the same size")
    return png_bytes(fig)


def _ratio_figure(res: dict) -> bytes:
    fig, axes = new_figure()
    ax = axes[0, 0]
    c = res["curves"]
    ax.plot(c["ratio_d"], c["ratio_median"], color="C3", label="flat boundary: exact median 1/band_quantile(½, d)")
    ax.fill_between(c["ratio_d"], c["ratio_q10"], c["ratio_q90"], color="C3", alpha=0.12,
                    label="flat boundary: 10–90% quantiles")
    ax.plot(c["ratio_d"], c["ratio_asymptote"], ":", color="k", lw=1, label="√d / 0.6745")
    anchor = res["linear_anchor"]
    _errorbar(ax, anchor, "C2", "D", "exactly linear classifier (measured)")
    models = sorted({r["model"] for r in res["sweep"]})
    for i, model in enumerate(models):
        rows = [r["boundary"] for r in res["sweep"] if r["model"] == model]
        _errorbar(ax, rows, f"C{i}", "os"[i % 2], f"{model} on {res['dataset']} (measured)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input dimension d")
    ax.set_ylabel("median (random-line distance) / (adversarial distance)")
    ax.set_title("How much farther the boundary is along a random direction")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _errorbar(ax, rows: list[dict], color: str, marker: str, label: str) -> None:
    d = [r["d"] for r in rows]
    med = _nan([r["median_ratio"] for r in rows])
    lo = _nan([r["median_ratio_ci99"][0] for r in rows])
    hi = _nan([r["median_ratio_ci99"][1] for r in rows])
    ax.errorbar(d, med, yerr=[np.nan_to_num(med - lo), np.nan_to_num(hi - med)], fmt=marker, color=color,
                ms=5, capsize=2, label=label)


def _sweep_figure(res: dict) -> bytes:
    fig, axes = new_figure(1, 2, width=9.6, height=3.6)
    digits = res["dataset"] == "digits"
    ax = axes[0, 0]
    models = sorted({r["model"] for r in res["sweep"]})
    for i, model in enumerate(models):
        rows = [r for r in res["sweep"] if r["model"] == model]
        d = [r["d"] for r in rows]
        ax.plot(d, _nan([r["fast_eps_median"] for r in rows]), "o-", color=f"C{i}",
                label=f"{model}: {'FGSM' if digits else 'FGM'} (adversarial)")
        ax.plot(d, _nan([r["noise_eps_median"] for r in rows]), "^--", color=f"C{i}", alpha=0.6,
                label=f"{model}: {'random signs' if digits else 'random direction'}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input dimension d")
    ax.set_ylabel(f"median smallest {'L∞ ε' if digits else 'L2 step'} that flips")
    ax.set_title("Budget needed to flip a correctly classified point")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xticks(sorted({r["d"] for r in res["sweep"]}))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    lin = res["linearity"]
    d = [r["d"] for r in lin["rows"]]
    ax.plot(d, [r["l1_expected"] for r in lin["rows"]], color="C3", lw=1, label="E‖w‖₁ = d√(2/π)")
    ax.plot(d, [r["shift_linf_per_eps"] for r in lin["rows"]], "o", color="C3",
            label=f"measured shift / ε, L∞ step ε·sign(w) (slope {lin['slope_linf']:.3f})")
    ax.plot(d, [r["l2_expected"] for r in lin["rows"]], color="C0", lw=1, label="√d")
    ax.plot(d, [r["shift_l2_per_eps"] for r in lin["rows"]], "s", color="C0",
            label=f"measured shift / ε, L2 step ε·w/‖w‖₂ (slope {lin['slope_l2']:.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input dimension d")
    ax.set_ylabel("score shift / ε")
    ax.set_title("Linearity law: a linear score under L∞ and L2 steps")
    ax.legend(fontsize=6)
    return png_bytes(fig)


def _examples_figure(res: dict) -> bytes:
    ex = res["examples"]
    n = len(ex["label"])
    fig, axes = new_figure(3, n, width=1.45 * n + 0.6, height=4.8)
    clean, adv = np.array(ex["clean"]), np.array(ex["adversarial"])
    delta = adv - clean
    lim = float(np.abs(delta).max()) or 1.0
    for j in range(n):
        for i, (img, cmap, vmin, vmax) in enumerate(((clean[j], "gray_r", 0, 1), (delta[j], "RdBu_r", -lim, lim),
                                                     (adv[j], "gray_r", 0, 1))):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        axes[0, j].set_title(f"{ex['clean_pred'][j]} ({ex['clean_conf'][j]:.0%})", fontsize=8)
        axes[1, j].set_title(f"‖δ‖∞ {ex['linf'][j]:.2f}", fontsize=7)
        axes[2, j].set_title(f"→ {ex['adv_pred'][j]} ({ex['adv_conf'][j]:.0%})", fontsize=8,
                             color="C3" if ex["adv_pred"][j] != ex["label"][j] else "k")
    for i, name in enumerate(("clean", "perturbation", "adversarial")):
        axes[i, 0].set_ylabel(name)
    budget = "" if ex["eps"] is None else f" at ε = {ex['eps']:g}"
    fig.suptitle(f"{ex['attack'].upper()}{budget} on the MLP: prediction (confidence)")
    return png_bytes(fig)


def _gilmer_figure(res: dict) -> bytes:
    fig, axes = new_figure()
    ax = axes[0, 0]
    curves = res["curves"]["gilmer"]
    for i, (d, c) in enumerate(sorted(curves.items(), key=lambda kv: int(kv[0]))):
        ax.plot(c["mu"], c["mean"], color=f"C{i}", label=f"d={d}: isoperimetric bound (exact cap, mean)")
        ax.plot(c["mu"], c["gaussian"], ":", color=f"C{i}", lw=1)
        pts = res["gilmer"] if d == str(res["models"]["MLP"]["d"]) else [
            r["gilmer"] for r in res["sweep"] if str(r["d"]) == d]
        seen = [p for p in pts if p["mu"] > 0]
        unseen = [p for p in pts if p["mu"] == 0]  # no error sampled: drawn at μ's upper 95% limit
        if seen:
            ax.plot([p["mu"] for p in seen], _nan([p["distance_mean"] for p in seen]), "o", color=f"C{i}",
                    label=f"d={d}: on-sphere PGD, mean distance (measured)")
        if unseen:
            ax.plot([p["mu_ci95"][1] for p in unseen], _nan([p["distance_mean"] for p in unseen]), "<",
                    color=f"C{i}", label=f"d={d}: no sampled error; μ below its upper 95% limit")
    ax.set_xscale("log")
    ax.set_xlabel("μ: measure of the error set on the inner sphere")
    ax.set_ylabel("mean distance to the nearest error")
    ax.set_title("Errors found vs the most an error set of measure μ allows\n(solid: exact cap; dotted: Φ⁻¹(1−μ)/√d)")
    ax.legend(fontsize=6)
    return png_bytes(fig)


def figures_for(results: dict) -> FigureSpecs:
    """The figures a run has, by file name: (caption, draw)."""
    out = {
        "accuracy_vs_eps.png": ("Accuracy vs budget for FGSM, PGD and random noise", _accuracy_figure),
        "ratio_vs_d.png": ("Random-direction vs adversarial distance to the boundary, against the exact law",
                           _ratio_figure),
        "sweep_and_linearity.png": ("Budget needed to flip vs d, and the linearity law", _sweep_figure),
    }
    if results.get("examples"):
        out["examples.png"] = ("Digits with their adversarial perturbations", _examples_figure)
    if results.get("gilmer"):
        out["spheres.png"] = ("Adversarial spheres: measured distance to errors vs the isoperimetric bound",
                              _gilmer_figure)
    return out


def write_attack_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the figures, ``results.json`` and ``report.html`` into ``out_dir``.

    Returns:
        The paths written, by kind ("report", "results", and one per figure name).
    """
    return write_report(results, draw_figures(figures_for(results), results), "attack.html.j2", out_dir, context={
        "num": lambda v, spec=".3g": "n/a" if v is None else format(v, spec)})
