"""The report of a checkpoint series (``moescope analyze A B C``, ``moescope compare A B``): curves over training.

Renders the dict :func:`moescope.analysis.series.checkpoint_series` returns; computes nothing but layout
(means over layers for the summary table). Plotly is inlined once, so the page works offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from moescope.report.analyze import plotly_div
from moescope.report.writer import write_report


def _x(res: dict) -> tuple[list, str]:
    steps = [c["step"] for c in res["checkpoints"]]
    if all(s is not None for s in steps):
        return steps, "training step"
    return [c["label"] for c in res["checkpoints"]], "checkpoint"


def _lines(res: dict, value, title: str, ylabel: str, div: str, *, reference: float | None = None,
           dashed=None) -> tuple[str, str]:
    """One line per MoE layer of ``value(entry, layer_pos)`` over the checkpoints (None: a gap)."""
    x, xlabel = _x(res)
    fig = go.Figure()
    for pos, layer in enumerate(res["layers"]):
        fig.add_trace(go.Scatter(x=x, y=[value(e, pos) for e in res["series"]], mode="lines+markers",
                                 name=f"layer {layer}", legendgroup=str(layer)))
        if dashed is not None:
            fig.add_trace(go.Scatter(x=x, y=[dashed(e, pos) for e in res["series"]], mode="lines",
                                     line={"dash": "dot", "width": 1}, name=f"layer {layer}, token-blind",
                                     legendgroup=str(layer), showlegend=pos == 0))
    if reference is not None:
        fig.add_hline(y=reference, line={"dash": "dash", "color": "grey"})
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, height=380)
    return title, plotly_div(fig, div)


def series_figures(res: dict) -> list[tuple[str, str]]:
    """The curves: saturation, load, specialisation, expert similarity, drift; a per-expert drift heatmap."""
    out = [
        _lines(res, lambda e, i: e["saturation"][i], "Router saturation: share of top-k kept at the last checkpoint",
               "saturation", "saturation", dashed=lambda e, i: e["chance_saturation"][i]),
        _lines(res, lambda e, i: e["routing"][i]["load_cv"], "Load imbalance (CV of expert loads)", "load CV",
               "load-cv"),
        _lines(res, lambda e, i: e["routing"][i]["domain_nmi"], "Domain specialisation (NMI of domain and expert)",
               "NMI", "domain-nmi"),
        _lines(res, lambda e, i: e["routing"][i]["vocabulary_excess"],
               "Vocabulary specialisation: best corrected share over the token-shuffled null", "excess", "vocab"),
    ]
    if res["series"][0]["similarity"] is not None:
        out.append(_lines(res, lambda e, i: e["similarity"][i]["ratio"],
                          "Expert similarity: subspace overlap / random regroupings of the same units (claim 7)",
                          "overlap ratio", "similarity", reference=1.0))
    out.append(_lines(res, lambda e, i: float(np.mean(e["drift"][i]["expert_relative_change"])),
                      "Weight drift: mean relative change of the experts' input projections from the last checkpoint",
                      "‖W − W_last‖ / ‖W_last‖", "drift"))
    mid = len(res["layers"]) // 2
    z = [e["drift"][mid]["expert_relative_change"] for e in res["series"]]
    x, _ = _x(res)
    fig = go.Figure(go.Heatmap(z=z, x=[f"e{j}" for j in range(len(z[0]))], y=[str(v) for v in x], colorscale="Viridis",
                               hovertemplate="%{y}, expert %{x}<br>change %{z:.3f}<extra></extra>"))
    title = f"Per-expert drift from the last checkpoint, MoE layer {res['layers'][mid]}"
    fig.update_layout(title=title, xaxis_title="expert", yaxis_title="checkpoint", height=360)
    out.append((title, plotly_div(fig, "drift-experts")))
    return out


def summary_rows(res: dict) -> list[dict]:
    """Per checkpoint, the means over layers the summary table shows."""
    rows = []
    for e in res["series"]:
        sim = [s["ratio"] for s in e["similarity"] or () if s.get("ratio") is not None]
        rows.append({"label": e["label"], "step": e["step"], "saturation": float(np.mean(e["saturation"])),
                     "chance": float(np.mean(e["chance_saturation"])),
                     "load_cv": float(np.mean([r["load_cv"] for r in e["routing"]])),
                     "similarity": float(np.mean(sim)) if sim else None,
                     "drift": float(np.mean([np.mean(d["expert_relative_change"]) for d in e["drift"]]))})
    return rows


def write_series_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` and a self-contained ``report.html`` into ``out_dir``."""
    return write_report(results, {}, "series.html.j2", out_dir,
                        context={"plots": series_figures(results), "rows": summary_rows(results),
                                 "plotly_js": get_plotlyjs()})
