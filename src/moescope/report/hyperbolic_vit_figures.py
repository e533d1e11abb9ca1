"""Figures of claim 20 (the hyperbolic ViT against its twin), drawn from ``run_hyperbolic_vit``'s result only."""

from __future__ import annotations

import numpy as np

from moescope.report.figures import new_figure, png_bytes

_COLORS = {"hyperbolic": "C3", "euclidean": "C0"}
_LABELS = {"hyperbolic": "hyperbolic ViT (Poincaré ball)", "euclidean": "Euclidean twin"}


def _accuracy_figure(res: dict) -> bytes:
    runs = res["runs"]
    hyp = np.array([r["hyperbolic"]["test_accuracy"] for r in runs])
    euc = np.array([r["euclidean"]["test_accuracy"] for r in runs])
    fig, axes = new_figure(1, 2, width=8.0, height=3.4)
    ax = axes[0, 0]
    for h, e in zip(hyp, euc, strict=True):
        ax.plot([0, 1], [e, h], color="0.6", lw=0.8)
    ax.scatter(np.zeros(len(euc)), euc, color=_COLORS["euclidean"], zorder=3, label=_LABELS["euclidean"])
    ax.scatter(np.ones(len(hyp)), hyp, color=_COLORS["hyperbolic"], zorder=3, label=_LABELS["hyperbolic"])
    ax.set_xticks([0, 1], ["Euclidean twin", "hyperbolic ViT"])
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylabel("test accuracy")
    ax.set_title("per seed (lines join a pair)")
    ax = axes[0, 1]
    diff = hyp - euc
    seeds = [r["seed"] for r in runs]
    ax.bar(np.arange(len(diff)), diff, color=np.where(diff >= 0, _COLORS["hyperbolic"], _COLORS["euclidean"]))
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xticks(np.arange(len(diff)), [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel("hyperbolic − Euclidean")
    ax.set_title(f"difference per seed (mean {diff.mean():+.3f})")
    p = res["params"]["hyperbolic"]
    fig.suptitle(f"Digits, {res['settings']['n_test']} test images per seed; both models {p:,} parameters")
    return png_bytes(fig)


def _training_figure(res: dict) -> bytes:
    fig, axes = new_figure(1, 1, width=6.0, height=3.6)
    ax = axes[0, 0]
    for geometry in ("euclidean", "hyperbolic"):
        curves = np.array([r[geometry]["train_loss"] for r in res["runs"]])      # (seeds, epochs)
        epochs = np.arange(1, curves.shape[1] + 1)
        for c in curves:
            ax.plot(epochs, c, color=_COLORS[geometry], lw=0.6, alpha=0.35)
        ax.plot(epochs, curves.mean(0), color=_COLORS[geometry], lw=2.0, label=f"{_LABELS[geometry]} (mean)")
    k = res["config"]["n_classes"]
    ax.axhline(np.log(k), color="0.5", ls="--", lw=0.8, label=f"chance (ln {k})")
    st = res["settings"]
    ax.set_xlabel(f"epoch (batch {st['batch_size']}, lr {st['lr']:g}, the same minibatches for both)")
    ax.set_ylabel("training cross-entropy")
    ax.set_title("Training loss per epoch; thin lines are seeds")
    ax.legend(fontsize=7)
    return png_bytes(fig)


FIGURES = {
    "hvt_accuracy.png": ("Test accuracy of the hyperbolic ViT and its Euclidean twin, per seed", _accuracy_figure),
    "hvt_training.png": ("Training loss of both ViTs per epoch", _training_figure),
}
