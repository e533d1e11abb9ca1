r"""Sarkar's combinatorial embedding of a tree in the Poincaré disk, and the precision it needs.

Sarkar 2011 ("Low distortion Delaunay embedding of trees in hyperbolic plane"), in the form
of Sala, De Sa, Gu & Ré 2018 ("Representation Tradeoffs for Hyperbolic Embeddings", §3,
Alg. 1). The root sits at 0 and its children sit at hyperbolic distance τ, spread evenly
over the full circle. For every other node a with parent b, an isometry
:math:`\varphi_a(z) = (z - a)/(1 - \bar a z)` moves a to 0. The children of a then go at
distance τ (Euclidean radius :math:`\tanh(\tau/2)`) at the angles
:math:`\arg\varphi_a(b) + 2\pi k/\deg a`, k = 1 … deg a − 1, and
:math:`\varphi_a^{-1}(w) = (w + a)/(1 + \bar a w)` maps them back.

Scale. Two rays from a vertex at angle α = 2π/deg_max are joined, through their ideal ends,
by a geodesic that passes within :math:`-\ln\tan(\alpha/4)` of the vertex. A path of ℓ
tree edges can therefore save at most :math:`\nu = -2\ln\tan(\pi/(2\deg_{\max}))` per turn
by cutting corners, so :math:`d_H \ge \ell(\tau - \nu)` while :math:`d_H \le \ell\tau`. Choosing

.. math:: \tau = \frac{1 + \varepsilon}{\varepsilon}\,\nu

bounds the worst-case distortion by :math:`\tau/(\tau - \nu) = 1 + \varepsilon`, given
exact arithmetic.

Precision. A node at depth D sits at :math:`1 - |z| \approx 2e^{-\tau D}`, so writing it down
takes about :math:`\tau D/\ln 2` bits. The rule of thumb quoted with the construction
doubles that, :math:`2\tau D/\ln 2` (enough to resolve every pair even along the longest
path, 2D edges through the root). The construction here runs in mpmath with the rule's
bits plus 64. :func:`precision_sweep` then rounds the exact coordinates to float32 and
float64 and measures where the embedding stops meeting 1 + ε. Measured on binary trees
with the exact-gap distance of :mod:`.poincare`, the breakdown comes at
τD/ln 2 ≈ 24 (float32) and ≈ 55 (float64), close to the formats' 24 and 53 significand
bits. The 2τD/ln 2 rule is therefore conservative by about 2× here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import networkx as nx
import torch

from moescope.geometry.curved._numerics import one_minus_cnorm2
from moescope.geometry.curved.distortion import graph_distances, pair_index, worst_case_distortion
from moescope.geometry.curved.poincare import dist_pairs

__all__ = [
    "SarkarEmbedding",
    "bits_rule",
    "mp_worst_case_distortion",
    "precision_sweep",
    "sarkar_embedding",
    "sarkar_tau",
    "worst_case_in_dtype",
]


def sarkar_tau(max_degree: int, eps: float) -> float:
    r""":math:`\tau = \frac{1+\varepsilon}{\varepsilon}\,(-2\ln\tan\frac{\pi}{2\deg_{\max}})`; 1 for paths (deg ≤ 2).

    A path turns by π at every node, so a geodesic needs no corner to cut and any τ > 0 is exact.
    """
    if isinstance(max_degree, bool) or not isinstance(max_degree, int) or max_degree < 1:
        raise ValueError(f"max_degree must be an integer >= 1; got {max_degree!r}")
    if not (isinstance(eps, (int, float)) and 0.0 < eps and math.isfinite(eps)):
        raise ValueError(f"eps (the allowed distortion above 1) must be a positive finite number; got eps={eps!r}")
    if max_degree <= 2:
        return 1.0
    nu = -2.0 * math.log(math.tan(math.pi / (2 * max_degree)))
    return (1.0 + eps) / eps * nu


def bits_rule(tau: float, depth: int) -> float:
    """The rule of thumb 2τ·depth/ln 2 for the bits an embedding of that depth needs."""
    return 2.0 * tau * depth / math.log(2.0)


@dataclass(frozen=True)
class SarkarEmbedding:
    """Exact (mpmath) points of a tree in the unit disk, in ``nodes`` order."""

    nodes: tuple
    points: tuple            # mpmath.mpc per node
    depth: tuple[int, ...]   # hops from the root per node
    root: object
    tau: float
    eps: float
    prec: int                # mpmath working precision in bits

    def to_tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """(n, 2) coordinates rounded to ``dtype`` (correctly rounded to float64 first)."""
        xy = torch.tensor([[float(z.real), float(z.imag)] for z in self.points], dtype=torch.float64)
        return xy.to(dtype)


def sarkar_embedding(tree: nx.Graph, *, eps: float = 0.1, tau: float | None = None, root: object = None,
                     prec: int | None = None) -> SarkarEmbedding:
    """Embed ``tree`` (undirected, connected, acyclic) with Sarkar's construction.

    Args:
        tree: the tree.
        eps: target worst-case distortion 1 + eps (sets τ via :func:`sarkar_tau`).
        tau: override the scale.
        root: the node placed at 0; default the first centre (smallest depth).
        prec: mpmath bits; default ⌈2τ·depth/ln 2⌉ + 64.
    """
    if not isinstance(tree, nx.Graph) or tree.is_directed() or tree.number_of_nodes() < 2 or not nx.is_tree(tree):
        raise ValueError("tree must be an undirected networkx tree (connected, acyclic) with at least 2 nodes")
    root = nx.center(tree)[0] if root is None else root
    if root not in tree:
        raise ValueError(f"root must be a node of the tree; got root={root!r}")
    max_deg = max(d for _, d in tree.degree())
    tau = sarkar_tau(max_deg, eps) if tau is None else float(tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive finite number; got tau={tau!r}")
    depth_of = nx.single_source_shortest_path_length(tree, root)
    height = max(depth_of.values())
    prec = math.ceil(bits_rule(tau, height)) + 64 if prec is None else int(prec)
    with mpmath.workprec(prec):
        r = mpmath.tanh(mpmath.mpf(tau) / 2)
        two_pi = 2 * mpmath.pi
        pos = {root: mpmath.mpc(0)}
        deg_root = tree.degree(root)
        for k, child in enumerate(tree.neighbors(root)):
            pos[child] = r * mpmath.expjpi(2 * mpmath.mpf(k) / deg_root)
        for parent, a in nx.bfs_edges(tree, root):
            children = [v for v in tree.neighbors(a) if v != parent]
            if not children:
                continue
            za = pos[a]
            to_zero = (pos[parent] - za) / (1 - mpmath.conj(za) * pos[parent])   # φ_a(parent)
            theta = mpmath.arg(to_zero)
            deg = tree.degree(a)
            for k, child in enumerate(children, start=1):
                w = r * mpmath.expj(theta + two_pi * k / deg)
                pos[child] = (w + za) / (1 + mpmath.conj(za) * w)              # φ_a^{-1}(w)
        nodes = tuple(tree)
        return SarkarEmbedding(nodes=nodes, points=tuple(+pos[v] for v in nodes),
                               depth=tuple(depth_of[v] for v in nodes), root=root, tau=tau, eps=float(eps),
                               prec=prec)


def mp_worst_case_distortion(emb: SarkarEmbedding, tree: nx.Graph) -> float:
    r"""Worst-case distortion at the embedding's own precision, with the independent form
    :math:`d = \operatorname{arcosh}\big(1 + 2|x-y|^2/((1-|x|^2)(1-|y|^2))\big)`. O(n²) mpmath: small trees."""
    idx = {v: k for k, v in enumerate(emb.nodes)}
    lengths = dict(nx.all_pairs_shortest_path_length(tree))
    hi, lo = mpmath.mpf(0), mpmath.inf
    with mpmath.workprec(emb.prec):
        gaps = [1 - abs(z) ** 2 for z in emb.points]
        for u in emb.nodes:
            for v in emb.nodes:
                i, j = idx[u], idx[v]
                if i >= j:
                    continue
                d = mpmath.acosh(1 + 2 * abs(emb.points[i] - emb.points[j]) ** 2 / (gaps[i] * gaps[j]))
                ratio = d / (emb.tau * lengths[u][v])
                hi, lo = max(hi, ratio), min(lo, ratio)
        return float(hi / lo)


def worst_case_in_dtype(emb: SarkarEmbedding, tree: nx.Graph, dtype: torch.dtype,
                        keep: torch.Tensor | None = None) -> tuple[float | None, str]:
    """Worst-case distortion after rounding the points to ``dtype`` (distances by the exact-gap formula).

    Returns (distortion, "") or (None, reason) when points round onto or outside the unit circle.
    ``keep`` selects a subset of node indices (e.g. all nodes up to some depth).
    """
    x = emb.to_tensor(dtype)
    nodes, dg = graph_distances(tree.subgraph([emb.nodes[k] for k in keep]) if keep is not None else tree)
    order = {v: k for k, v in enumerate(emb.nodes)}
    x = x[[order[v] for v in nodes]]
    outside = int((one_minus_cnorm2(x, 1.0) <= 0).sum())
    if outside:
        return None, f"{outside} point(s) round onto or outside the unit circle"
    i, j = pair_index(len(nodes))
    d = dist_pairs(x, i, j).double()
    return float(worst_case_distortion(d, dg[i, j] * emb.tau)), ""


def precision_sweep(*, branching: int = 2, max_depth: int = 8, eps: float = 0.25,
                    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64), exact_up_to: int = 127,
                    stop_when_broken: bool = True) -> dict:
    """Sarkar on ``nx.balanced_tree(branching, max_depth)`` and its prefixes of depth 1 … max_depth.

    One exact embedding (τ from the full tree's deg_max = branching + 1) serves every depth:
    the construction is top-down, so a prefix embeds as the smaller tree would. Each depth
    gets its worst-case distortion when rounded to each dtype, and in mpmath when it has at
    most ``exact_up_to`` nodes. With ``stop_when_broken`` the sweep ends at the first depth
    where every dtype has failed.

    Returns:
        {"branching", "eps", "tau", "prec", "rows": [{depth, n, radius, bits_rule, bits_radius,
        exact, <dtype name>: {"worst", "ok", "reason"}}], "last_ok": {dtype name: depth or 0}}.
    """
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ValueError(f"max_depth must be an integer >= 1; got {max_depth!r}")
    tree = nx.balanced_tree(branching, max_depth)
    emb = sarkar_embedding(tree, eps=eps, root=0)
    depth = torch.tensor(emb.depth)
    rows, last_ok = [], {str(dt).removeprefix("torch."): 0 for dt in dtypes}
    broken = dict.fromkeys(last_ok, False)
    for k in range(1, max_depth + 1):
        keep = (depth <= k).nonzero().flatten()
        sub = tree.subgraph([emb.nodes[i] for i in keep])
        row = {"depth": k, "n": len(keep), "radius": emb.tau * k, "bits_rule": bits_rule(emb.tau, k),
               "bits_radius": emb.tau * k / math.log(2.0), "exact": None}
        if len(keep) <= exact_up_to:
            ks = keep.tolist()
            sub_emb = SarkarEmbedding(nodes=tuple(emb.nodes[i] for i in ks), points=tuple(emb.points[i] for i in ks),
                                      depth=tuple(emb.depth[i] for i in ks), root=emb.root, tau=emb.tau, eps=eps,
                                      prec=emb.prec)
            row["exact"] = mp_worst_case_distortion(sub_emb, sub)
        for dt in dtypes:
            name = str(dt).removeprefix("torch.")
            worst, reason = worst_case_in_dtype(emb, tree, dt, keep=keep)
            ok = worst is not None and worst <= 1.0 + eps
            if worst is not None and not ok:
                reason = f"worst-case distortion {worst:.4g} exceeds 1 + ε = {1 + eps:g}"
            row[name] = {"worst": worst, "ok": ok, "reason": reason}
            if ok and not broken[name]:
                last_ok[name] = k
            broken[name] = broken[name] or not ok
        rows.append(row)
        if stop_when_broken and all(broken.values()):
            break
    return {"branching": branching, "eps": eps, "tau": emb.tau, "prec": emb.prec, "rows": rows, "last_ok": last_ok}
