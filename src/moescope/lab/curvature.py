"""Trees need hyperbolic space: distortion of graph embeddings in E, H, S and products, measured.

The lecture's "latest trends" (hyperbolic LLMs, HypLoRA, hyperbolic ViTs, mixed-curvature
trees, spectro-Riemannian GNNs) rest on one fact. A tree's volume grows exponentially, and
so does hyperbolic space, while Euclidean space grows polynomially. This experiment shows
the fact four ways, and every sentence of its report is formatted here from the numbers:

* volume growth: nodes of the ternary tree within r hops, 3^r-like, beside the area of a
  disk of radius r in H² (2π(cosh r − 1)) and E² (πr²);
* Gu et al. 2019, Table 1: each graph embedded by gradient descent into E^d, H^d, S^d and
  H^{d−1}×S¹ with the same objective, optimiser, steps and restarts. Our average
  distortions sit beside the published ones, and the matching geometry should win;
* Gu et al.'s discrete curvature of each graph, and the signature it suggests;
* Sarkar's construction: the tree in the Poincaré disk with distortion ≤ 1 + ε in exact
  arithmetic, and the depth at which float32 and float64 stop holding that bound.

Claim 16 ("trees embed with lower distortion in hyperbolic space than in Euclidean space
of the same dimension") gets its verdict from :func:`claim16`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from moescope.geometry.curved import poincare
from moescope.geometry.curved._numerics import BALL_MARGIN, MAX_DIST0, UNIT_ROUNDOFF
from moescope.geometry.curved.distortion import graph_distances
from moescope.geometry.curved.embedding import EmbeddingConfig, embed_graph
from moescope.geometry.curved.graph_curvature import curvature_estimates, suggest_signature
from moescope.geometry.curved.graphs import GRAPH_DESCRIPTIONS, STANDARD_GRAPHS, standard_graph
from moescope.geometry.curved.product import format_signature, parse_signature
from moescope.geometry.curved.sarkar import mp_worst_case_distortion, precision_sweep, sarkar_embedding

# Gu, Sala, Gunel & Ré 2019 (ICLR), Table 1: average distortion at total dimension 3.
GU_TABLE1 = {
    "cycle": {"E3": 0.1064, "H3": 0.1638, "S3": 0.0007, "H2xS1": 0.1108},
    "tree": {"E3": 0.1483, "H3": 0.0321, "S3": 0.1605, "H2xS1": 0.0538},
    "ring-of-trees": {"E3": 0.0997, "H3": 0.0774, "S3": 0.1106, "H2xS1": 0.0616},
}
# The geometry each standard graph should prefer: the cycle is a circle, the tree is
# hyperbolic, and the ring of trees is both.
EXPECTED_KIND = {"cycle": "S", "tree": "H", "ring-of-trees": "product"}

CLAIM16 = "Trees embed with lower distortion in hyperbolic space than in Euclidean space of the same dimension"
# Supported when hyperbolic space cuts Euclidean average distortion by at least a quarter
# and every hyperbolic restart beats every Euclidean one. A cut that small is well outside
# the spread of restarts seen on 40-node graphs (a few percent), so it cannot be noise.
CLAIM16_MAX_RATIO = 0.75

_READERS = {".edgelist": nx.read_edgelist, ".txt": nx.read_edgelist, ".csv": nx.read_edgelist,
            ".adjlist": nx.read_adjlist, ".graphml": nx.read_graphml, ".gml": nx.read_gml}


@dataclass(frozen=True)
class CurvatureConfig:
    """What ``moescope curvature`` measures. Defaults finish in about a minute on 2 cores."""

    graphs: tuple[str, ...] = STANDARD_GRAPHS  # Gu et al.'s three; or a path to an edge list / GraphML / GML
    dim: int = 3                   # Gu et al.'s Table 1 compares spaces of total dimension 3
    steps: int = 1000              # Riemannian Adam steps per space (the loss has flattened by then)
    restarts: int = 8              # independent inits per space, trained together; the best loss is kept
    lr: float = 0.05
    seed: int = 0
    sarkar_eps: tuple[float, ...] = (0.1, 0.25)  # 1 + ε targets for the precision sweep
    sarkar_branching: int = 2      # binary trees: deg_max = 3
    sarkar_max_depth: int = 8      # 511 nodes; the sweep stops once float32 and float64 both fail
    figure_eps: float = 1.0        # small τ so the drawn tree does not vanish into the boundary
    max_nodes: int = 400           # training costs O(n²) per step; larger FILE graphs are refused

    def __post_init__(self) -> None:
        if not self.graphs:
            raise ValueError("graphs must name at least one graph: tree, cycle, ring-of-trees or a file")
        for spec in self.graphs:
            if spec not in STANDARD_GRAPHS and not (Path(spec).is_file() and Path(spec).suffix.lower() in _READERS):
                raise ValueError(f"graph must be one of {', '.join(STANDARD_GRAPHS)} or an existing graph file "
                                 f"({', '.join(sorted(_READERS))}); got {spec!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 2:
            raise ValueError(f"dim must be an integer >= 2 (so that H^(d-1) x S^1 exists); got dim={self.dim!r}")
        EmbeddingConfig(steps=self.steps, lr=self.lr, restarts=self.restarts, seed=self.seed)  # validates
        if not self.sarkar_eps or any(not (e > 0 and math.isfinite(e)) for e in self.sarkar_eps):
            raise ValueError(f"sarkar_eps must be positive numbers; got {self.sarkar_eps}")
        if self.sarkar_max_depth < 1 or self.sarkar_branching < 2:
            raise ValueError(f"need sarkar_max_depth >= 1 and sarkar_branching >= 2; got "
                             f"{self.sarkar_max_depth}, {self.sarkar_branching}")


def signatures(dim: int) -> tuple[str, ...]:
    """E^d, H^d, S^d and H^(d−1)×S¹: Table 1's rows for d = 3."""
    return (f"E{dim}", f"H{dim}", f"S{dim}", f"H{dim - 1}xS1")


def _kind(signature: str) -> str:
    return "product" if "x" in signature else signature[0]


def load_graph(spec: str, *, max_nodes: int = 400) -> tuple[str, nx.Graph, str]:
    """(name, graph, description) for a standard name or a file (.edgelist/.txt/.csv, .adjlist, .graphml, .gml)."""
    if spec in STANDARD_GRAPHS:
        return spec, standard_graph(spec), GRAPH_DESCRIPTIONS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"graph must be one of {', '.join(STANDARD_GRAPHS)} or an existing file; got {spec!r}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"cannot read {path.name}: use one of {', '.join(sorted(_READERS))} "
                         f"(edge lists hold one 'u v' pair per line)")
    g = nx.Graph(reader(path))            # undirected, simple
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    if g.number_of_nodes() > max_nodes:
        raise ValueError(f"{path.name} has {g.number_of_nodes()} nodes; at most {max_nodes} are embedded "
                         f"(training costs O(n²) per step)")
    graph_distances(g)                     # validates: >= 3 nodes, connected
    return path.stem, g, f"{path.name}: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges"


def _geodesics(x: torch.Tensor, edges: list[tuple[int, int]], samples: int = 16) -> list[list[list[float]]]:
    """Polylines of the geodesics γ(t) = exp_x(t log_x y), t ∈ [0, 1], between ball points x (n, 2)."""
    if not edges:
        return []
    a = x[[u for u, _ in edges]]                                     # (E, 2)
    b = x[[v for _, v in edges]]
    t = torch.linspace(0, 1, samples, dtype=x.dtype)[:, None, None]  # (T, 1, 1)
    pts = poincare.expmap(a.expand(samples, -1, -1), t * poincare.logmap(a, b))  # (T, E, 2)
    return pts.permute(1, 0, 2).tolist()


def _disk(points: torch.Tensor, graph: nx.Graph, nodes: list) -> dict:
    index = {v: k for k, v in enumerate(nodes)}
    edges = [(index[u], index[v]) for u, v in graph.edges()]
    return {"points": points.tolist(), "edges": _geodesics(points, edges) if len(edges) <= 400 else []}


def _embed_one(name: str, graph: nx.Graph, desc: str, cfg: CurvatureConfig,
               on_step: Callable[[int], None] | None) -> dict:
    nodes, dist = graph_distances(graph)
    est = curvature_estimates(graph)
    counts, edges = np.histogram(est["xi"], bins=24)
    ecfg = EmbeddingConfig(steps=cfg.steps, lr=cfg.lr, restarts=cfg.restarts, seed=cfg.seed)
    gu = GU_TABLE1.get(name) if cfg.dim == 3 else None
    rows, product_disk = [], None
    for sig in signatures(cfg.dim):
        res = embed_graph(dist, sig, ecfg, on_step=on_step)
        m = parse_signature(sig)
        rows.append({"signature": sig, "pretty": format_signature(m, pretty=True), "kind": _kind(sig),
                     "avg_distortion": res.avg_distortion,
                     # inf when two nodes land on one point: JSON has no inf, so None says "unbounded"
                     "worst_distortion": res.worst_distortion if math.isfinite(res.worst_distortion) else None,
                     "loss": res.loss, "scales": list(res.scales), "curvatures": list(res.curvatures),
                     "restart_avg_distortions": list(res.restart_avg_distortions),
                     "gu": None if gu is None else gu.get(sig)})
        if _kind(sig) == "product" and cfg.dim == 3:   # H² factor of H²×S¹: drawable in the disk
            product_disk = _disk(m.split(res.points)[0], graph, nodes)
    winner = min(rows, key=lambda r: r["avg_distortion"])
    expected = EXPECTED_KIND.get(name)
    return {
        "name": name, "description": desc, "n": graph.number_of_nodes(), "edges": graph.number_of_edges(),
        "diameter": int(dist.max()), "is_tree": nx.is_tree(graph),
        "curvature": {k: est[k] for k in ("mean", "frac_negative", "frac_positive", "frac_flat",
                                          "angles_total", "angles_used")}
        | {"hist": {"edges": edges.tolist(), "counts": counts.tolist()}},
        "suggested": suggest_signature(est, cfg.dim),
        "rows": rows,
        "winner": winner["signature"],
        "gu_winner": None if gu is None else min(gu, key=gu.get),
        "expected_kind": expected,
        "ranking_holds": None if expected is None else winner["kind"] == expected,
        "product_disk": product_disk,
    }


def _sarkar_figure(cfg: CurvatureConfig) -> dict:
    """Sarkar's embedding of the 40-node tree, and the same points moved by the isometry x ↦ (−a) ⊕ x
    that brings a depth-2 node a to the centre (near the boundary the tree has all the room it needs)."""
    tree = standard_graph("tree")
    emb = sarkar_embedding(tree, eps=cfg.figure_eps, root=0)
    x = emb.to_tensor(torch.float64)
    nodes = list(emb.nodes)
    centre = emb.depth.index(2)
    moved = poincare.mobius_add(-x[centre].expand_as(x), x)
    return {"graph": GRAPH_DESCRIPTIONS["tree"], "eps": emb.eps, "tau": emb.tau, "prec": emb.prec,
            "worst_exact": mp_worst_case_distortion(emb, tree), "max_radius": emb.tau * max(emb.depth),
            "depth": list(emb.depth), "recentred": _disk(moved, tree, nodes) | {"node": nodes[centre]}
            } | _disk(x, tree, nodes)


def _volume(max_r: int = 8) -> dict:
    r = np.arange(0, max_r + 1)
    fine = np.linspace(0, max_r, 161)
    return {"r": r.tolist(), "tree_nodes": ((3 ** (r + 1) - 1) // 2).tolist(),   # ternary tree within r hops
            "r_fine": fine.tolist(), "area_h2": (2 * np.pi * (np.cosh(fine) - 1)).tolist(),
            "area_e2": (np.pi * fine**2).tolist()}


def _numerics() -> dict:
    out = {}
    for dt in (torch.float32, torch.float64):
        name = str(dt).removeprefix("torch.")
        margin = BALL_MARGIN[dt]
        out[name] = {"unit_roundoff": UNIT_ROUNDOFF[dt], "max_dist0": MAX_DIST0[dt], "ball_margin": margin,
                     "project_max_dist0": math.log(2.0 / margin - 1.0),
                     "measured_dist0": float(poincare.dist0(torch.tensor([1.0 - UNIT_ROUNDOFF[dt], 0.0], dtype=dt)))}
    return out


def _sentences(graphs: list[dict], sweeps: list[dict], figure: dict) -> list[dict]:
    out = []
    for g in graphs:
        rows = {r["signature"]: r for r in g["rows"]}
        ours = ", ".join(f"{r['pretty']} {r['avg_distortion']:.4f}" for r in g["rows"])
        text = (f"{g['name']} ({g['n']} nodes): average distortion {ours}; best {rows[g['winner']]['pretty']}.")
        if g["gu_winner"] is not None:
            gu = ", ".join(f"{r['pretty']} {r['gu']:.4f}" for r in g["rows"])
            text += f" Gu et al. 2019: {gu}; best {rows[g['gu_winner']]['pretty']}."
        if g["ranking_holds"] is not None:
            text += (" The matching geometry wins, as published." if g["ranking_holds"] else
                     f" The matching geometry ({g['expected_kind']}) does not win here.")
        c = g["curvature"]
        text += (f" Discrete curvature: mean ξ = {c['mean']:.3f} ({c['frac_negative']:.0%} of angles negative, "
                 f"{c['frac_positive']:.0%} positive), suggesting {g['suggested']['signature']}.")
        out.append({"id": f"graph-{g['name']}", "title": f"Embedding the {g['name']}", "sentence": text})
    parts = []
    for s in sweeps:
        deepest = s["rows"][-1]["depth"]
        held = []
        for name in ("float32", "float64"):
            k = s["last_ok"][name]
            reach = (f"beyond the deepest tried ({k})" if k == deepest and s["rows"][-1][name]["ok"]
                     else f"up to depth {k}")
            held.append(f"{name} holds 1 + ε {reach} (radius τ·depth = {s['tau'] * k:.1f}, "
                        f"τ·depth/ln 2 = {s['tau'] * k / math.log(2):.0f} bits; the 2τ·depth/ln 2 rule says "
                        f"{2 * s['tau'] * k / math.log(2):.0f})")
        parts.append(f"for ε = {s['eps']:g} (τ = {s['tau']:.2f}) " + " and ".join(held))
    out.append({"id": "sarkar", "title": "Sarkar's construction and the precision it needs", "sentence": (
        f"In exact arithmetic ({figure['prec']} bits) Sarkar's construction embeds the 40-node ternary tree in "
        f"the Poincaré disk with worst-case distortion {figure['worst_exact']:.4f} ≤ 1 + ε = {1 + figure['eps']:g}. "
        f"On balanced binary trees, " + "; ".join(parts) + ". A float holds a point of the unit ball at most "
        f"{MAX_DIST0[torch.float32]:.2f} (float32) or {MAX_DIST0[torch.float64]:.2f} (float64) from the origin "
        f"along an axis.")})
    return out


def claim16(results: dict) -> dict:
    """Claim 16's verdict from :func:`run_curvature`'s results (needs a tree among the graphs).

    Supported when H^d's average distortion is at most ``CLAIM16_MAX_RATIO`` × E^d's and
    every hyperbolic restart beats every Euclidean one; not supported when H^d is no better
    than E^d; inconclusive in between or when no tree was embedded.
    """
    dim = results["config"]["dim"]
    base = {"id": 16, "claim": CLAIM16, "title": CLAIM16, "threshold": CLAIM16_MAX_RATIO,
            "null": (f"Euclidean space of the same dimension (E{dim}), trained with the same objective "
                     f"(Gu et al. 2019), optimiser, steps and restarts; Gu et al.'s Table 1 as the published "
                     f"reference")}
    trees = [g for g in results["graphs"] if g["is_tree"]]
    if not trees:
        return base | {"verdict": "inconclusive", "numbers": {},
                       "reason": "no tree among the embedded graphs", "sentence":
                       "Claim 16 is inconclusive: no tree was embedded (run with --graph tree)."}
    g = next((t for t in trees if t["name"] == "tree"), trees[0])
    rows = {r["signature"]: r for r in g["rows"]}
    h, e = rows[f"H{dim}"], rows[f"E{dim}"]
    ratio = h["avg_distortion"] / e["avg_distortion"] if e["avg_distortion"] > 0 else 1.0
    separated = max(h["restart_avg_distortions"]) < min(e["restart_avg_distortions"])
    if ratio <= CLAIM16_MAX_RATIO and separated:
        verdict = "supported"
        reason = (f"H{dim} cuts the average distortion to {ratio:.2f}× E{dim}'s (threshold ≤ {CLAIM16_MAX_RATIO}) "
                  f"and all {len(h['restart_avg_distortions'])} hyperbolic restarts beat all Euclidean ones")
    elif ratio >= 1.0:
        verdict = "not supported"
        reason = f"H{dim}'s average distortion is {ratio:.2f}× E{dim}'s: no improvement"
    else:
        verdict = "inconclusive"
        reason = (f"H{dim}'s distortion is {ratio:.2f}× E{dim}'s (needs ≤ {CLAIM16_MAX_RATIO})"
                  + ("" if separated else " and the restarts overlap"))
    numbers = {"graph": g["name"], "n": g["n"], "H": h["avg_distortion"], "E": e["avg_distortion"], "ratio": ratio,
               "H_restarts": h["restart_avg_distortions"], "E_restarts": e["restart_avg_distortions"],
               "restarts_separated": separated, "gu_H": h["gu"], "gu_E": e["gu"],
               "gu_ratio": None if h["gu"] is None or e["gu"] is None else h["gu"] / e["gu"]}
    pub = "" if numbers["gu_ratio"] is None else (
        f" Gu et al. 2019 report {h['gu']:.4f} against {e['gu']:.4f} ({numbers['gu_ratio']:.2f}×).")
    sentence = (f"Claim 16 is {verdict}: embedding the {g['name']} ({g['n']} nodes) in dimension {dim}, "
                f"hyperbolic space gives average distortion {h['avg_distortion']:.4f} against Euclidean "
                f"{e['avg_distortion']:.4f} ({ratio:.2f}×); {reason}.{pub}")
    return base | {"verdict": verdict, "reason": reason, "numbers": numbers, "sentence": sentence}


def total_steps(cfg: CurvatureConfig) -> int:
    """Optimiser steps :func:`run_curvature` takes in all (for a progress bar)."""
    return len(cfg.graphs) * len(signatures(cfg.dim)) * cfg.steps


def run_curvature(cfg: CurvatureConfig = CurvatureConfig(), on_step: Callable[[int], None] | None = None) -> dict:
    """Run the experiment; returns a JSON-ready dict of every number the report shows."""
    loaded = [load_graph(spec, max_nodes=cfg.max_nodes) for spec in cfg.graphs]
    graphs = [_embed_one(name, g, desc, cfg, on_step) for name, g, desc in loaded]
    sweeps = [precision_sweep(branching=cfg.sarkar_branching, max_depth=cfg.sarkar_max_depth, eps=e)
              for e in cfg.sarkar_eps]
    figure = _sarkar_figure(cfg)
    results = {"config": asdict(cfg), "graphs": graphs, "sarkar": {"figure": figure, "sweeps": sweeps},
               "volume": _volume(), "numerics": _numerics(), "gu_table1": GU_TABLE1}
    results["claims"] = [claim16(results), *_sentences(graphs, sweeps, figure)]
    return results
