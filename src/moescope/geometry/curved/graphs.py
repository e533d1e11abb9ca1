"""The three 40-node test graphs of Gu et al. 2019 (Table 1), built locally with networkx.

Gu et al. describe a cycle, a tree and a "ring of trees" without publishing the instances.
Ours are stated exactly, so every number built on them can be reproduced:

* ``cycle``: ``nx.cycle_graph(40)``;
* ``tree``: ``nx.balanced_tree(3, 3)``, the complete ternary tree of depth 3
  (1 + 3 + 9 + 27 = 40 nodes);
* ``ring-of-trees``: :func:`ring_of_trees` with ``ring=10, branching=3, height=1``, a
  10-cycle whose every node roots a 3-leaf star (10 · 4 = 40 nodes).
"""

from __future__ import annotations

import networkx as nx

__all__ = ["GRAPH_DESCRIPTIONS", "STANDARD_GRAPHS", "ring_of_trees", "standard_graph"]

STANDARD_GRAPHS = ("cycle", "tree", "ring-of-trees")
GRAPH_DESCRIPTIONS = {
    "cycle": "nx.cycle_graph(40)",
    "tree": "nx.balanced_tree(3, 3) (complete ternary tree, depth 3)",
    "ring-of-trees": "ring_of_trees(ring=10, branching=3, height=1): a 10-cycle, each node rooting a 3-leaf star",
}


def ring_of_trees(ring: int, branching: int, height: int) -> nx.Graph:
    """A ``ring``-cycle whose every node is the root of ``nx.balanced_tree(branching, height)``.

    Nodes are 0..n−1 with the ring first (0..ring−1); n = ring · (b^(h+1) − 1)/(b − 1).
    """
    for name, value, low in (("ring", ring, 3), ("branching", branching, 1), ("height", height, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {name}={value!r}")
    g = nx.cycle_graph(ring)
    nxt = ring
    for r in range(ring):
        tree = nx.balanced_tree(branching, height)
        mapping = {0: r} | {v: nxt + v - 1 for v in tree if v != 0}
        nxt += tree.number_of_nodes() - 1
        g.add_edges_from((mapping[a], mapping[b]) for a, b in tree.edges())
    return g


def standard_graph(name: str) -> nx.Graph:
    """One of ``STANDARD_GRAPHS`` (see the module docstring for the exact generators)."""
    if name == "cycle":
        return nx.cycle_graph(40)
    if name == "tree":
        return nx.balanced_tree(3, 3)
    if name == "ring-of-trees":
        return ring_of_trees(ring=10, branching=3, height=1)
    raise ValueError(f"graph must be one of {', '.join(STANDARD_GRAPHS)}; got {name!r}")
