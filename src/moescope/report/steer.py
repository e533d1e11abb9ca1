"""The report of ``moescope steer``: the risk-difference map, the steered experts and the steering effects.

Renders the dict :func:`moescope.analysis.steer.run_steer` returns; computes nothing but layout.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from moescope.report.analyze import plotly_div
from moescope.report.writer import write_report


def risk_difference_heatmap(res: dict) -> go.Figure:
    """Layer × expert Δ = p_A − p_B; the hover shows the interval."""
    a, b = res["sets"]
    text = [[f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in row] for row in res["interval"]]
    vmax = max((abs(v) for row in res["delta"] for v in row), default=0.0) or 1.0
    fig = go.Figure(go.Heatmap(
        z=res["delta"], x=[f"e{e}" for e in range(len(res["delta"][0]))], y=[f"layer {i}" for i in res["layers"]],
        text=text, colorscale="RdBu", reversescale=True, zmin=-vmax, zmax=vmax, colorbar={"title": "Δ"},
        hovertemplate="%{y}, expert %{x}<br>Δ %{z:+.3f}<br>interval %{text}<extra></extra>"))
    fig.update_layout(title=f"Risk difference of activation: p({a}) − p({b})", xaxis_title="expert",
                      yaxis_title="MoE layer", height=160 + 30 * len(res["layers"]))
    return fig


def write_steer_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """``report.html`` and ``results.json`` in ``out_dir``."""
    return write_report(results, {}, "steer.html.j2", out_dir,
                        context={"heatmap": plotly_div(risk_difference_heatmap(results), "risk-difference"),
                                 "plotly_js": get_plotlyjs()})
