"""Figures of claim 17 (product-space random forests): each function takes
:func:`moescope.lab.product_forests.run_product_forests`'s dict (``data["product_forests"]``) and
recomputes nothing."""

from __future__ import annotations

import numpy as np

from moescope.report.figures import new_figure, png_bytes


def _accuracy_figure(data: dict) -> bytes:
    """Left: each data set's test accuracy per seed, product-space forest vs ambient forest.
    Right: per seed, the accuracy difference averaged over data sets (what the rule reads)."""
    fig, axes = new_figure(1, 2, width=9.6, height=3.8)
    ax = axes[0, 0]
    names = list(data["datasets"])
    for i, name in enumerate(names):
        d = data["datasets"][name]
        for offset, key, color in ((-0.15, "product", "C3"), (0.15, "ambient", "C0")):
            acc = np.asarray(d[key])
            ax.scatter(np.full(acc.size, i + offset), acc, color=color, s=14, alpha=0.7,
                       label=("product-space forest" if key == "product" else "ambient-coordinate forest")
                       if i == 0 else None)
            ax.plot([i + offset - 0.1, i + offset + 0.1], [acc.mean()] * 2, color=color, lw=2)
    ax.set_xticks(range(len(names)), [f"{n}\n{data['datasets'][n]['signature']}" for n in names], fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy per data set (dots: seeds, bars: means)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    diff = np.asarray(data["product_mean"]) - np.asarray(data["ambient_mean"])
    ax.bar(range(diff.size), diff, color=np.where(diff >= 0, "C3", "C0"))
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.axhline(diff.mean(), color="C3", lw=1, ls="--", label=f"mean {diff.mean():+.3f}")
    ax.set_xticks(range(diff.size), [str(s) for s in data["seeds"]], fontsize=7)
    ax.set_xlabel("seed")
    ax.set_ylabel("accuracy: product − ambient\n(mean over data sets)")
    ax.set_title("Paired difference per seed", fontsize=9)
    ax.legend(fontsize=7)
    return png_bytes(fig)


FIGURES = {
    "product_forests.png": ("Product-space random forests vs scikit-learn's forest on ambient coordinates: test "
                            "accuracy per data set and seed, and the per-seed difference the claim's rule reads.",
                            _accuracy_figure),
}
