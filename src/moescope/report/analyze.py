"""The report of ``moescope analyze``: interactive heatmaps (plotly, inlined) and tables.

Renders the dict :func:`moescope.analysis.analyze.analyze` returns; computes nothing but
layout. The page embeds plotly.js once, so it works offline with hover on every heatmap.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from moescope.report.writer import write_report

_SCALE = "Viridis"


def plotly_div(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(margin={"l": 60, "r": 20, "t": 50, "b": 50}, template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _heatmap(z, x, y, title: str, xlabel: str, ylabel: str, hover: str, height: int = 420, **kw) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale=kw.pop("colorscale", _SCALE), hovertemplate=hover, **kw))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, height=height)
    return fig


def token_heatmaps(res: dict) -> list[tuple[str, str]]:
    """One token × expert heatmap per recorded layer of each sample text (router weights)."""
    out = []
    for sample in res.get("samples", []):
        shown = sample["tokens"][: sample.get("heatmap_tokens", len(sample["tokens"]))]
        labels = [f"{i}: {tok!r}" for i, tok in enumerate(shown)]
        for layer, matrix in sample["weights"].items():
            e = len(matrix[0]) if matrix else 0
            fig = _heatmap(matrix, [f"e{j}" for j in range(e)], labels,
                           f"{sample['name']}: router combine weight per token, MoE layer {layer}",
                           "expert", "token", "token %{y}<br>expert %{x}<br>weight %{z:.3f}<extra></extra>",
                           height=max(360, 16 * len(labels) + 120))
            fig.update_yaxes(autorange="reversed")
            title = f"Token × expert, {sample['name']}, layer {layer}"
            out.append((title, plotly_div(fig, f"tok-{sample['name']}-{layer}")))
    return out


def ablation_heatmaps(res: dict) -> list[tuple[str, str]]:
    """The re-route ablation map's domain × expert heatmap per MoE layer (:func:`moescope.report.ablate`)."""
    from moescope.report.ablate import ablation_heatmap

    abl = res.get("ablation") or {}
    if "summary" not in abl:
        return []
    level = abl["config"]["level"]
    return [(f"Loss change when each expert is removed ({mode}), MoE layer {layer['layer']}",
             plotly_div(ablation_heatmap(layer, mode, level), f"ablation-{mode}-{layer['layer']}"))
            for mode, per in abl["summary"].items() for layer in per["layers"]]


def pathway_heatmaps(res: dict) -> list[tuple[str, str]]:
    """P(expert j at layer l+1 | expert i at layer l) for every consecutive pair of MoE layers."""
    out = []
    for t in res.get("pathways", {}).get("transitions", []):
        if t.get("transition") is None:
            continue
        z = t["transition"]
        width = len(next(row for row in z if row is not None))
        fig = _heatmap([row if row is not None else [None] * width for row in z], [f"e{j}" for j in range(width)],
                       [f"e{i}" for i in range(len(z))],
                       f"P(expert at layer {t['to']} | expert at layer {t['from']}), first choices",
                       f"expert at layer {t['to']}", f"expert at layer {t['from']}",
                       "from %{y} to %{x}<br>P = %{z:.3f}<extra></extra>", zmin=0, zmax=1)
        fig.update_yaxes(autorange="reversed")
        out.append((f"Pathway, layer {t['from']} → {t['to']}", plotly_div(fig, f"path-{t['from']}")))
    return out


def load_heatmap(res: dict) -> tuple[str, str]:
    rows = res["routing"]
    z = [r["load"] for r in rows]
    e = len(z[0])
    fig = _heatmap(z, [f"e{j}" for j in range(e)], [f"layer {r['layer']}" for r in rows],
                   "Share of routed assignments per expert (uniform = 1/E)", "expert", "MoE layer",
                   "%{y}, expert %{x}<br>share %{z:.4f}<extra></extra>", zmin=0)
    return "Layer × expert load", plotly_div(fig, "load")


def coactivation_heatmap(res: dict, layer_pos: int) -> tuple[str, str]:
    r = res["routing"][layer_pos]
    z = r["coactivation_conditional"]
    e = len(z)
    fig = _heatmap(z, [f"e{j}" for j in range(e)], [f"e{j}" for j in range(e)],
                   f"P(expert b chosen | expert a chosen), MoE layer {r['layer']}", "b", "a",
                   "a=%{y}, b=%{x}<br>P(b|a) %{z:.3f}<extra></extra>", zmin=0)
    return f"Co-activation, layer {r['layer']}", plotly_div(fig, f"coact-{r['layer']}")


def domain_heatmap(res: dict, layer_pos: int) -> tuple[str, str] | None:
    r = res["routing"][layer_pos]
    if "domains" not in r:
        return None
    d = r["domains"]
    e = len(d["specialisation"][0])
    fig = _heatmap(d["specialisation"], [f"e{j}" for j in range(e)], d["names"],
                   f"Domain specialisation (p − k/E)/(1 − k/E), MoE layer {r['layer']} (0 = chance)",
                   "expert", "domain", "%{y}, expert %{x}<br>specialisation %{z:.3f}<extra></extra>",
                   colorscale="RdBu", zmid=0)
    return f"Domain × expert, layer {r['layer']}", plotly_div(fig, f"domain-{r['layer']}")


def weight_figures(res: dict) -> list[tuple[str, str]]:
    """Router-centroid cosines and expert-subspace distances of the first analysed layer, plus
    mean cos² against the random null for every layer."""
    geo = res.get("weights")
    if not geo or not geo.get("layers"):
        return []
    out = []
    layers = geo["layers"]
    first = layers[0]
    index = first["index"]
    if "cosine" in first.get("router", {}):
        cos = first["router"]["cosine"]
        e = len(cos)
        fig = _heatmap(cos, [f"e{j}" for j in range(e)], [f"e{j}" for j in range(e)],
                       f"Cosine between router rows (expert centroids), MoE layer {index}", "expert", "expert",
                       "cos(e%{y}, e%{x}) = %{z:.3f}<extra></extra>", colorscale="RdBu", zmid=0)
        out.append((f"Router centroids, layer {index}", plotly_div(fig, "router-cos")))
    if "grassmann" in first.get("experts", {}):
        g = first["experts"]["grassmann"]
        e = len(g)
        fig = _heatmap(g, [f"e{j}" for j in range(e)], [f"e{j}" for j in range(e)],
                       f"Grassmann distance between expert input subspaces (rank {first['experts']['rank']}), "
                       f"MoE layer {index}", "expert", "expert", "d(e%{y}, e%{x}) = %{z:.3f}<extra></extra>")
        out.append((f"Expert subspaces, layer {index}", plotly_div(fig, "grassmann")))
    pts = [(lay["index"], lay["experts"]["mean_cos2_pairs"], lay["experts"]["null_mean_cos2"])
           for lay in layers if "mean_cos2_pairs" in lay.get("experts", {})]
    if pts:
        fig = go.Figure()
        fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers+lines",
                        name="measured (mean over expert pairs)")
        fig.add_scatter(x=[p[0] for p in pts], y=[p[2] for p in pts], mode="lines", name="random-subspace null",
                        line={"dash": "dash"})
        fig.update_layout(title="Mean cos² of principal angles between experts vs the null r·s/H",
                          xaxis_title="MoE layer", yaxis_title="mean cos²", height=380)
        out.append(("Expert overlap vs null", plotly_div(fig, "overlap")))
    return out


def write_analyze_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` and a self-contained ``report.html`` into ``out_dir``."""
    plots = [load_heatmap(results)] if results.get("routing") else []
    if results.get("routing"):
        mid = len(results["routing"]) // 2
        plots.append(coactivation_heatmap(results, mid))
        dom = domain_heatmap(results, mid)
        if dom:
            plots.append(dom)
    plots += pathway_heatmaps(results) + ablation_heatmaps(results) + token_heatmaps(results) \
        + weight_figures(results)
    return write_report(results, {}, "analyze.html.j2", out_dir, context={"plots": plots,
                                                                          "plotly_js": get_plotlyjs()})
