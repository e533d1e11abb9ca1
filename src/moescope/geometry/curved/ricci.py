r"""Ollivier–Ricci curvature of the edges of a graph (Ollivier 2009), exact by linear programming.

For a node x of degree :math:`d_x` the lazy random walk with idleness α puts mass α on x and
:math:`(1-\alpha)/d_x` on each neighbour:

.. math:: \mu^\alpha_x = \alpha\,\delta_x + \frac{1-\alpha}{d_x}\sum_{z \sim x}\delta_z .

The curvature of an edge (x, y) compares the cost of moving one walk onto the other with the length
of the edge (1 hop):

.. math:: \kappa_\alpha(x, y) = 1 - \frac{W_1(\mu^\alpha_x, \mu^\alpha_y)}{d(x, y)},

with :math:`W_1` the earth mover's distance under the shortest-path (hop) metric. It lies in [−2, 1].
:math:`W_1` is the optimal-transport linear program over the two supports (at most
:math:`(d_x+1)(d_y+1)` variables), solved by ``scipy.optimize.linprog`` (HiGHS) for all edges at once
(:func:`ollivier_ricci`). :func:`wasserstein1` solves one pair; when both measures are uniform on supports
of the same size (α = 0 or α = 1/(d+1) with :math:`d_x = d_y`) the optimal plan is a permutation
(Birkhoff–von Neumann), found by ``scipy.optimize.linear_sum_assignment``.

Values derived by hand from the definition (and checked in the tests against the dual linear program):

* complete graph :math:`K_n`: the walks differ only at x and y, by :math:`|\alpha - (1-\alpha)/(n-1)|`
  each, one hop apart, so :math:`\kappa = 1 - |\alpha - \tfrac{1-\alpha}{n-1}|`
  (α = 0: (n − 2)/(n − 1));
* cycle :math:`C_n`, n ≥ 6: the four nodes x − 1, x, x + 1, x + 2 lie on a geodesic arc, where
  :math:`W_1` is the area between the two cumulative distributions,
  :math:`\tfrac{1-\alpha}{2} + \alpha + \tfrac{1-\alpha}{2} = 1`, so κ = 0 for every α;
* tree, α = 0: :math:`\kappa(x, y) = -2\,(1 - 1/d_x - 1/d_y)_+` (Jost & Liu 2014, Th. 4), e.g. −2/3 on
  an edge between two nodes of degree 3 and 0 on a star's edge.

CUSP (Grover et al., ICLR 2025) uses α = 0.5, the default here.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from scipy.optimize import linear_sum_assignment, linprog
from scipy.sparse import coo_array
from scipy.sparse.csgraph import shortest_path

__all__ = ["edge_curvatures", "lazy_walk", "ollivier_ricci", "wasserstein1"]

_UNIFORM_TOL = 1e-12


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is the idleness of the lazy random walk and must lie in [0, 1]; got alpha={alpha!r}")
    return float(alpha)


def lazy_walk(graph: nx.Graph, node, alpha: float = 0.5) -> dict:
    """:math:`\\mu^\\alpha_x` as {node: mass}: α on ``node``, (1 − α)/deg on each neighbour (all of it on
    ``node`` if isolated)."""
    alpha = _check_alpha(alpha)
    nbrs = [z for z in graph.neighbors(node) if z != node]
    if not nbrs:
        return {node: 1.0}
    walk = {z: (1.0 - alpha) / len(nbrs) for z in nbrs}
    if alpha > 0:
        walk[node] = alpha
    return walk


def wasserstein1(mu: dict, nu: dict, cost) -> float:
    """Earth mover's distance between measures {node: mass} with ``cost(a_nodes, b_nodes)`` → (len a, len b) array.

    Uses an assignment when both are uniform on equally many points, the transport LP otherwise.
    """
    a_nodes, a = list(mu), np.fromiter(mu.values(), float)
    b_nodes, b = list(nu), np.fromiter(nu.values(), float)
    c = np.asarray(cost(a_nodes, b_nodes), dtype=float)
    m, n = c.shape
    if m == n and np.ptp(a) < _UNIFORM_TOL and np.ptp(b) < _UNIFORM_TOL and abs(a[0] - b[0]) < _UNIFORM_TOL:
        rows, cols = linear_sum_assignment(c)
        return float(c[rows, cols].sum() * a[0])
    # π (m·n, row-major) ≥ 0 with row sums a and column sums b; one equality is implied by the others
    a_eq = np.zeros((m + n, m * n))
    for i in range(m):
        a_eq[i, i * n:(i + 1) * n] = 1.0
    for j in range(n):
        a_eq[m + j, j::n] = 1.0
    res = linprog(c.ravel(), A_eq=a_eq[:-1], b_eq=np.concatenate([a, b])[:-1], bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"the transport LP failed: {res.message}")
    return float(res.fun)


def ollivier_ricci(graph: nx.Graph, alpha: float = 0.5) -> dict:
    """κ_α(x, y) for every edge of an undirected graph, as {(x, y): κ} with the graph's own edge order.

    Hop distances come from one all-pairs breadth-first search (scipy); self-loops are ignored. The
    transport problems of all edges are solved as one block-diagonal linear program: its optimum is
    optimal in every block (the objective is a sum of independent blocks), so each edge's cost is read off
    its own block — one HiGHS call instead of one per edge.
    """
    alpha = _check_alpha(alpha)
    if graph.is_directed():
        raise ValueError("ollivier_ricci needs an undirected graph; got a directed one")
    nodes = list(graph.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    adj = nx.to_scipy_sparse_array(graph, nodelist=nodes, weight=None, format="lil")
    adj.setdiag(0)
    hops = shortest_path(adj.tocsr(), method="D", unweighted=True, directed=False)
    edges = [(x, y) for x, y in graph.edges() if x != y]
    if not edges:
        return {}
    walks = {v: lazy_walk(graph, v, alpha) for v in nodes}
    costs, rows, cols, b_eq, starts = [], [], [], [], [0]
    row0 = 0
    for x, y in edges:
        mu, nu = walks[x], walks[y]
        a_idx = [index[v] for v in mu]
        b_idx = [index[v] for v in nu]
        m, n = len(a_idx), len(b_idx)
        off = starts[-1]
        costs.append(hops[np.ix_(a_idx, b_idx)].ravel())
        var = off + np.arange(m * n).reshape(m, n)
        for i in range(m):                                   # row sums = μ_x
            rows.append(np.full(n, row0 + i))
            cols.append(var[i])
        for j in range(n - 1):                               # column sums = μ_y (the last one is implied)
            rows.append(np.full(m, row0 + m + j))
            cols.append(var[:, j])
        b_eq.extend(mu.values())
        b_eq.extend(list(nu.values())[:-1])
        row0 += m + n - 1
        starts.append(off + m * n)
    c = np.concatenate(costs)
    r, k = np.concatenate(rows), np.concatenate(cols)
    a_eq = coo_array((np.ones(r.size), (r, k)), shape=(row0, c.size)).tocsr()
    res = linprog(c, A_eq=a_eq, b_eq=np.asarray(b_eq), bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"the transport LP failed: {res.message}")
    per_edge = np.add.reduceat(c * res.x, starts[:-1])
    return {e: 1.0 - float(w) for e, w in zip(edges, per_edge, strict=True)}


def edge_curvatures(graph: nx.Graph, alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(edges (E, 2) as node indices 0..N−1 in ``graph.nodes`` order, κ (E,)): :func:`ollivier_ricci` as arrays."""
    index = {v: i for i, v in enumerate(graph.nodes)}
    orc = ollivier_ricci(graph, alpha)
    edges = np.array([(index[x], index[y]) for x, y in orc], dtype=np.int64).reshape(-1, 2)
    return edges, np.fromiter(orc.values(), float, count=len(orc))
