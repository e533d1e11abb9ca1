r"""Discrete sectional curvature of a graph (Gu et al. 2019, §4), and a product signature from it.

In a geodesic triangle of a space of constant curvature, let m be the midpoint of b and c.
Then for any point a the parallelogram law

.. math:: d(a, m)^2 + \frac{d(b, c)^2}{4} - \frac{d(a, b)^2 + d(a, c)^2}{2}

is 0 in flat space, negative in hyperbolic space and positive on a sphere (Bridson &
Haefliger 1999, the CAT(k) comparison). Gu, Sala, Gunel & Ré take, for a node m with two
neighbours b, c and a reference node a ≠ m,

.. math:: \xi_G(m; b, c; a) = \frac{1}{2 d_G(a, m)}\Big(d_G(a, m)^2 + \frac{d_G(b, c)^2}{4}
    - \frac{d_G(a, b)^2 + d_G(a, c)^2}{2}\Big),

and average it over a to get :math:`\xi_G(m; b, c)`, one estimate per "angle" (m; b, c).
Worked by hand: on a path, every a lies beyond b or beyond c, so each term is 0. In a
tree, an a that hangs off m through a third neighbour gives −2t/(2t) = −1 at distance t.
In the 40-cycle only the antipode of m contributes, (20² + 1 − 19²)/40 = 1, so
ξ = 1/39 for every angle.
"""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np

from moescope.geometry.curved.distortion import graph_distances

__all__ = ["curvature_estimates", "suggest_signature"]

# |ξ| below this counts as flat: the estimates are rationals of small integers, so exact zeros are exact.
_FLAT = 1e-12


def curvature_estimates(graph: nx.Graph, *, max_angles: int = 20_000, seed: int = 0) -> dict:
    """ξ_G(m; b, c) for every angle (m; b, c), or a seeded sample of ``max_angles`` of them.

    Returns:
        {"xi": array of estimates, "mean", "frac_negative", "frac_positive", "frac_flat",
        "angles_total", "angles_used"}; a graph with no node of degree >= 2 has no angle
        (ValueError).
    """
    nodes, dist = graph_distances(graph)
    d = dist.numpy()
    index = {v: k for k, v in enumerate(nodes)}
    angles = [(index[m], index[b], index[c]) for m in nodes
              for b, c in itertools.combinations(sorted(graph.neighbors(m), key=index.get), 2)]
    if not angles:
        raise ValueError("the graph has no node with two neighbours, so no angle to measure curvature at")
    total = len(angles)
    if total > max_angles:
        rng = np.random.default_rng(seed)
        angles = [angles[k] for k in sorted(rng.choice(total, size=max_angles, replace=False))]
    ang = np.asarray(angles)                       # (A, 3): m, b, c
    xi = np.concatenate([_xi(d, ang[k:k + 2048]) for k in range(0, len(ang), 2048)])
    xi = np.where(np.abs(xi) < _FLAT, 0.0, xi)
    return {
        "xi": xi,
        "mean": float(xi.mean()),
        "frac_negative": float((xi < 0).mean()),
        "frac_positive": float((xi > 0).mean()),
        "frac_flat": float((xi == 0).mean()),
        "angles_total": total,
        "angles_used": len(ang),
    }


def _xi(d: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """ξ_G(m; b, c) for a chunk of angles (A, 3), averaged over every a ≠ m."""
    m, b, c = ang[:, 0], ang[:, 1], ang[:, 2]
    dam, dab, dac = d[m], d[b], d[c]               # (A, n): distances from every node a
    dbc = d[b, c][:, None]                         # (A, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (dam**2 + dbc**2 / 4 - (dab**2 + dac**2) / 2) / (2 * dam)
    terms[np.arange(len(ang)), m] = 0.0           # a = m is excluded (d(a, m) = 0)
    return terms.sum(1) / (d.shape[0] - 1)


def suggest_signature(estimates: dict, dim: int, *, minority: float = 0.05) -> dict:
    """A signature of total dimension ``dim`` read off the signs of the curvature estimates.

    Rule (stated, not fitted): every sign that shows up in at least ``minority`` of the
    angles with a non-zero estimate gets a factor. All flat → ``E{dim}``; only negative →
    ``H{dim}``; only positive → ``S{dim}``; both → ``H{dim-1}xS1`` when negatives are the
    larger share, else ``H1xS{dim-1}`` (needs dim >= 2). Gu et al. match the whole
    distribution of ξ; this is its two-sign summary. It reads the 40-cycle as S, the tree as
    H and the ring of trees (10% positive angles, the ring's own) as H²×S¹. A flat grid has
    both signs in its estimates, so the rule calls it a product.

    Returns:
        {"signature", "reason"}.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1; got dim={dim!r}")
    if not 0.0 <= minority < 0.5:
        raise ValueError(f"minority must lie in [0, 0.5); got minority={minority!r}")
    neg, pos = estimates["frac_negative"], estimates["frac_positive"]
    signed = neg + pos
    if signed == 0:
        return {"signature": f"E{dim}", "reason": "every angle is flat (ξ = 0)"}
    share = neg / signed
    desc = f"{neg:.0%} of angles negative, {pos:.0%} positive"
    if 1 - share < minority or (dim == 1 and share >= 0.5):
        return {"signature": f"H{dim}", "reason": f"{desc}: fewer than {minority:.0%} of signed angles are positive"}
    if share < minority or dim == 1:
        return {"signature": f"S{dim}", "reason": f"{desc}: fewer than {minority:.0%} of signed angles are negative"}
    sig = f"H{dim - 1}xS1" if share >= 0.5 else f"H1xS{dim - 1}"
    return {"signature": sig, "reason": f"{desc}: both signs hold at least {minority:.0%} of signed angles, "
                                        f"so a product with more dimensions for the larger share"}
