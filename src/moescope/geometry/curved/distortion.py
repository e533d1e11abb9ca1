r"""Graph distances and the distortion of an embedding (Sala et al. 2018; Gu et al. 2019).

For graph distances :math:`d_G(i, j)` and embedded distances :math:`d(i, j)` over the
:math:`\binom{n}{2}` pairs :math:`i < j`:

* average distortion (Gu et al. 2019, Table 1):
  :math:`D_{avg} = \binom{n}{2}^{-1}\sum_{i<j} \frac{|d(i,j) - d_G(i,j)|}{d_G(i,j)}`;
* worst-case distortion (Sala et al. 2018, §2):
  :math:`D_{wc} = \max_{i<j}\frac{d(i,j)}{d_G(i,j)} \cdot \max_{i<j}\frac{d_G(i,j)}{d(i,j)} \ge 1`.
  It does not change when the embedding is rescaled, and it is 1 exactly for an isometry up to scale;
* Gu et al.'s training objective (§3.2, eq. 2):
  :math:`L = \binom{n}{2}^{-1}\sum_{i<j}\big|(d(i,j)/d_G(i,j))^2 - 1\big|`.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch
from scipy.sparse.csgraph import shortest_path

__all__ = [
    "average_distortion",
    "distortion_loss",
    "graph_distances",
    "pair_index",
    "worst_case_distortion",
]


def graph_distances(graph: nx.Graph) -> tuple[list, torch.Tensor]:
    """(nodes, D): hop distances (n, n) float64 of a connected undirected graph, in ``list(graph)`` order."""
    if not isinstance(graph, nx.Graph) or graph.is_directed():
        raise TypeError(f"graph must be an undirected networkx.Graph; got {type(graph).__name__}")
    n = graph.number_of_nodes()
    if n < 3:
        raise ValueError(f"graph must have at least 3 nodes to measure distortion; got {n}")
    if not nx.is_connected(graph):
        parts = nx.number_connected_components(graph)
        raise ValueError(f"graph must be connected (graph distances are infinite otherwise); got {parts} components")
    nodes = list(graph)
    adj = nx.to_scipy_sparse_array(graph, nodelist=nodes, weight=None, format="csr")
    return nodes, torch.from_numpy(shortest_path(adj, unweighted=True, directed=False).astype(np.float64))


def pair_index(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the n(n−1)/2 pairs i < j."""
    i, j = torch.triu_indices(n, n, offset=1)
    return i, j


def _check(d: torch.Tensor, dg: torch.Tensor) -> None:
    if d.shape[-1:] != dg.shape[-1:]:
        raise ValueError(f"embedded and graph distances must list the same pairs; got {tuple(d.shape)} "
                         f"and {tuple(dg.shape)}")
    if bool((dg <= 0).any()):
        raise ValueError("graph distances of distinct pairs must be positive (pass pairs i < j only)")


def distortion_loss(d: torch.Tensor, dg: torch.Tensor) -> torch.Tensor:
    """Gu et al.'s objective mean |(d/d_G)² − 1| over the last dimension (pairs)."""
    _check(d, dg)
    return ((d / dg).square() - 1.0).abs().mean(-1)


def average_distortion(d: torch.Tensor, dg: torch.Tensor) -> torch.Tensor:
    """mean |d − d_G| / d_G over the last dimension (pairs)."""
    _check(d, dg)
    return ((d - dg).abs() / dg).mean(-1)


def worst_case_distortion(d: torch.Tensor, dg: torch.Tensor) -> torch.Tensor:
    """max(d/d_G) · max(d_G/d) over the last dimension; inf when two distinct nodes coincide."""
    _check(d, dg)
    ratio = d / dg
    return ratio.amax(-1) / ratio.amin(-1)
