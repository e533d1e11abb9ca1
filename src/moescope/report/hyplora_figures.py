"""Figures of claim 19 (HypLoRA vs LoRA): rendered from :func:`moescope.lab.hyplora.run_hyplora`'s dict,
nothing recomputed."""

from __future__ import annotations

import numpy as np

from moescope.report.figures import new_figure, png_bytes

_STYLE = {"hyplora": ("HypLoRA", "C3"), "lora": ("LoRA (Euclidean twin)", "C0")}


def _comparison_figure(data: dict) -> bytes:
    """Fine-tuning curves (mean over seeds), and the held-out answer-token losses, one line per seed."""
    fig, axes = new_figure(1, 3, width=11.5, height=3.6)
    ax = axes[0, 0]
    steps = data["settings"]["finetune_steps"]
    for method, (label, color) in _STYLE.items():
        curves = np.asarray([r["curve"] for r in data["runs"][method]])
        x = np.linspace(0, steps, curves.shape[1], endpoint=False)
        ax.plot(x, curves.mean(0), color=color, label=label)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("answer-token loss (nats, mean over seeds)")
    ax.set_title("Fine-tuning on short chains", fontsize=9)
    ax.legend(fontsize=7)
    for ax, key, title in ((axes[0, 1], "easy_loss", "Held out: training lengths"),
                           (axes[0, 2], "hard_loss", f"Held out: {data['task']['hard_ops']}-step chains")):
        for h, lo in zip(data["runs"]["hyplora"], data["runs"]["lora"], strict=True):
            ax.plot([0, 1], [lo[key], h[key]], color="0.5", marker="o")
        before = data["base_model"]["hard" if key == "hard_loss" else "easy"]["answer_loss"]
        ax.set_xticks([0, 1], ["LoRA", "HypLoRA"])
        ax.set_xlim(-0.3, 1.3)
        ax.set_ylabel("answer-token loss (nats)")
        ax.set_title(f"{title}, one line per seed\n(base model without adapter: {before:.2f})", fontsize=9)
    return png_bytes(fig)


def _delta_figure(data: dict) -> bytes:
    """Relative δ of the base model's embeddings and hidden states beside matched Gaussian clouds."""
    sets = list(data["delta"].items())
    fig, axes = new_figure(1, 1, width=6.0, height=3.6)
    ax = axes[0, 0]
    for i, (_, d) in enumerate(sets):
        obs, gauss = np.asarray(d["relative"]), np.asarray(d["gaussian"])
        jitter = np.linspace(-0.08, 0.08, obs.size)
        ax.scatter(2 * i + jitter, obs, color="C3", s=22, label="the model" if i == 0 else None)
        ax.scatter(2 * i + 0.7 + jitter, gauss, color="0.55", s=22,
                   label="Gaussian, same mean and covariance" if i == 0 else None)
    ax.set_xticks([2 * i + 0.35 for i in range(len(sets))],
                  [f"{name}\n({d['points']} points, d = {d['dim']})" for name, d in sets], fontsize=8)
    ax.set_ylabel("relative δ = 2δ / diameter")
    ax.set_ylim(bottom=0.0)
    ax.set_title("Gromov four-point δ (exact over all quadruples); 0 = a tree", fontsize=9)
    ax.legend(fontsize=7)
    return png_bytes(fig)


FIGURES = {
    "hyplora_comparison.png": ("HypLoRA against LoRA at equal rank: fine-tuning and held-out loss",
                               _comparison_figure),
    "hyplora_delta.png": ("δ-hyperbolicity of the base model against matched Gaussian clouds", _delta_figure),
}
