"""The report of ``moescope ablate``: one domain × expert heatmap per mode and MoE layer, and tables.

Renders the dict :func:`moescope.analysis.ablate.run_ablation` returns; computes nothing but layout.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from moescope.report.analyze import plotly_div
from moescope.report.writer import write_report

MODE_TITLES = {"reroute": "re-route (the expert's selection score −∞; top-k among the others)",
               "zero": "zero (the expert's weighted output removed; other weights unchanged)"}


def ablation_heatmap(layer: dict, mode: str, level: float) -> go.Figure:
    """Domain × expert mean loss change of one layer; the hover shows the interval."""
    text = [["not measured exactly" if iv is None else f"[{iv[0]:+.4f}, {iv[1]:+.4f}]" for iv in row]
            for row in layer["interval"]]
    vmax = max((abs(v) for row in layer["mean"] for v in row if v is not None), default=0.0) or 1.0
    fig = go.Figure(go.Heatmap(
        z=layer["mean"], x=[f"e{e}" for e in layer["experts"]], y=layer["domains"], text=text,
        colorscale="RdBu", reversescale=True, zmin=-vmax, zmax=vmax, colorbar={"title": "Δ loss"},
        hovertemplate=f"domain %{{y}}<br>expert %{{x}}<br>Δ loss %{{z:+.4f}} nats<br>{level:.0%} interval "
                      "%{text}<extra></extra>"))
    fig.update_layout(title=f"MoE layer {layer['layer']}: loss change when each expert is removed ({mode})",
                      xaxis_title="expert", yaxis_title="domain", height=160 + 40 * len(layer["domains"]))
    return fig


def write_ablate_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """``report.html`` and ``results.json`` in ``out_dir``."""
    level = results["config"]["level"]
    plots = {mode: [plotly_div(ablation_heatmap(layer, mode, level), f"ablation-{mode}-{layer['layer']}")
                    for layer in per["layers"]]
             for mode, per in results["summary"].items()}
    return write_report(results, {}, "ablate.html.j2", out_dir,
                        context={"plots": plots, "plotly_js": get_plotlyjs(), "mode_titles": MODE_TITLES})
