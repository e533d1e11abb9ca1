"""Claim 21's experiment: CUSP against a GCN of equal parameters, on homophilic and heterophilic graphs.

Node classification on graphs generated with networkx, three classes, transductive (one graph, a random
30% of its nodes labelled for training, the rest for testing):

* ``sbm``: a stochastic block model with the classes as blocks. Homophilic: edges mostly inside blocks;
  heterophilic: mostly between blocks;
* ``ring``: a ring lattice (``watts_strogatz_graph(n, 4, 0.05)``, a cycle with its second neighbours and a
  few rewired edges). Homophilic: three arcs; heterophilic: position mod 3, so almost every edge joins two
  classes;
* ``tree``: a uniform random labelled tree rooted at node 0. Homophilic: three contiguous stretches of the
  depth-first order (subtrees and the paths between them); heterophilic: depth mod 3, so every edge joins two
  classes.

Node features are weak and the same in every regime: the one-hot class times ``signal`` plus standard normal
noise in ``features`` dimensions, so the graph has to carry most of the label. Each seed draws a new graph,
features, split and initialisation; CUSP and its twin train on the same draw (a paired design), with Adam at
the same learning rate, weight decay and epochs, and are scored on the test nodes at the last epoch.

Everything random is drawn from generators seeded by ``seed``: no global state changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np
import torch

from moescope.curved_models.cusp import (
    CuspConfig,
    CuspGNN,
    count_params,
    cusp_edge_weights,
    euclidean_twin,
    filter_response,
    gcn_operator,
    normalized_adjacency,
)
from moescope.geometry.curved.ricci import edge_curvatures

__all__ = ["FAMILIES", "PROFILES", "REGIMES", "SpectralGNNProfile", "make_task", "run_spectral_gnn"]

FAMILIES = ("sbm", "ring", "tree")
REGIMES = ("homophilic", "heterophilic")
N_CLASSES = 3
_LAMBDA = np.linspace(0.0, 2.0, 41)       # Laplacian eigenvalues at which the learned filter responses are drawn


@dataclass(frozen=True)
class SpectralGNNProfile:
    """Sizes of one profile; the defaults are the full profile."""

    families: tuple[str, ...] = FAMILIES
    seeds: int = 5
    nodes: int = 120
    epochs: int = 100
    lr: float = 0.05                  # Adam; the same for both models
    weight_decay: float = 5e-4        # Kipf & Welling's value
    train_fraction: float = 0.3
    features: int = 8
    signal: float = 1.0               # feature SNR: a node's own features alone give roughly 55-60% accuracy
    cusp: CuspConfig = field(default_factory=CuspConfig)


PROFILES = {
    "quick": SpectralGNNProfile(families=("sbm",), seeds=3, nodes=90, epochs=50),
    "full": SpectralGNNProfile(),
}


def _graph(family: str, regime: str, n: int, rng: np.random.Generator) -> tuple[nx.Graph, np.ndarray]:
    """A graph with nodes 0..n−1 and its labels (n,) in {0, 1, 2}."""
    gseed = int(rng.integers(2**31))
    if family == "sbm":
        sizes = [n // 3 + (i < n % 3) for i in range(3)]
        p_in, p_out = (0.15, 0.02) if regime == "homophilic" else (0.02, 0.08)
        probs = [[p_in if i == j else p_out for j in range(3)] for i in range(3)]
        g = nx.stochastic_block_model(sizes, probs, seed=gseed)
        labels = np.repeat(np.arange(3), sizes)
        g = nx.Graph(g)                                    # drop the block attributes
    elif family == "ring":
        g = nx.watts_strogatz_graph(n, 4, 0.05, seed=gseed)
        pos = np.arange(n)
        labels = (pos * 3 // n) if regime == "homophilic" else pos % 3
    elif family == "tree":
        g = nx.random_labeled_tree(n, seed=gseed)
        if regime == "homophilic":
            order = list(nx.dfs_preorder_nodes(g, 0))
            labels = np.empty(n, dtype=np.int64)
            labels[order] = np.arange(n) * 3 // n
        else:
            depth = nx.single_source_shortest_path_length(g, 0)
            labels = np.array([depth[v] % 3 for v in range(n)])
    else:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")
    g = nx.convert_node_labels_to_integers(g, ordering="sorted")
    return g, np.asarray(labels, dtype=np.int64)


def make_task(family: str, regime: str, profile: SpectralGNNProfile, seed: int) -> dict:
    """One draw: graph, labels, features, split, both operators, the edge curvatures (tensors and arrays)."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}; got {regime!r}")
    rng = np.random.default_rng(seed)
    g, y = _graph(family, regime, profile.nodes, rng)
    n = g.number_of_nodes()
    x = rng.standard_normal((n, profile.features))
    x[np.arange(n), y] += profile.signal
    perm = rng.permutation(n)
    n_train = round(profile.train_fraction * n)
    edges, kappa = edge_curvatures(g, profile.cusp.ricci_alpha)
    cusp_op = normalized_adjacency(n, edges, cusp_edge_weights(kappa)) if profile.cusp.cusp_laplacian \
        else gcn_operator(g)
    same = y[edges[:, 0]] == y[edges[:, 1]]
    return {"graph": g, "x": torch.as_tensor(x), "y": torch.as_tensor(y), "train": torch.as_tensor(perm[:n_train]),
            "test": torch.as_tensor(perm[n_train:]), "cusp_op": cusp_op, "gcn_op": gcn_operator(g),
            "kappa": kappa, "homophily": float(same.mean()) if len(same) else None}


def _train(model: torch.nn.Module, task: dict, op: torch.Tensor, profile: SpectralGNNProfile) -> float:
    """Train with full-batch Adam; returns the test accuracy after the last epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
    x, y, train = task["x"], task["y"], task["train"]
    for _ in range(profile.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x, op)[train], y[train])
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(x, op).argmax(-1)
    return float((pred[task["test"]] == y[task["test"]]).double().mean())


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run on one intra-op thread (these tensors are tiny: threads only add overhead), then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seeds(seed: int, n: int) -> list[int]:
    return [1000 * seed + i for i in range(n)]


def run_spectral_gnn(profile: str = "quick", seed: int = 0) -> dict:
    """Train CUSP and its Euclidean twin on every (family, regime) over the profile's seeds.

    Returns a JSON-ready dict: ``runs`` (one record per family, regime and seed with both accuracies),
    ``per_seed`` (per seed: mean accuracy of each model over the families, per regime), ``params``,
    ``filters`` (learned responses of the first layer's bands, mean over runs, per regime), ``curvature``
    (histograms of edge curvature per family and regime) and the profile.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}; got profile={profile!r}")
    with _one_thread():
        return _run(PROFILES[profile], profile, seed)


def _run(p: SpectralGNNProfile, profile: str, seed: int) -> dict:
    runs, responses, curv = [], {r: {b: [] for b in p.cusp.bands} for r in REGIMES}, {}
    params = None
    for s in _seeds(seed, p.seeds):
        for fi, family in enumerate(p.families):
            for ri, regime in enumerate(REGIMES):
                run_seed = s * 100 + 10 * fi + ri
                task = make_task(family, regime, p, run_seed)
                cusp = CuspGNN(p.cusp, p.features, N_CLASSES, seed=run_seed)
                twin = euclidean_twin(cusp, seed=run_seed)
                params = {"cusp": count_params(cusp), "gcn": count_params(twin), "gcn_widths": list(twin.widths)}
                acc_cusp = _train(cusp, task, task["cusp_op"], p)
                acc_gcn = _train(twin, task, task["gcn_op"], p)
                runs.append({"seed": s, "family": family, "regime": regime, "cusp": acc_cusp, "gcn": acc_gcn,
                             "homophily": task["homophily"]})
                gamma = cusp.layers[0].filter.gamma.detach()
                for b, band in enumerate(p.cusp.bands):
                    responses[regime][band].append(filter_response(gamma[b], _LAMBDA).tolist())
                key = f"{family}/{regime}"
                curv.setdefault(key, []).extend(task["kappa"].tolist())
    per_seed = {r: {"cusp": [], "gcn": []} for r in REGIMES}
    for s in _seeds(seed, p.seeds):
        for r in REGIMES:
            sel = [x for x in runs if x["seed"] == s and x["regime"] == r]
            for m in ("cusp", "gcn"):
                per_seed[r][m].append(float(np.mean([x[m] for x in sel])))
    bins = np.linspace(-2.0, 1.0, 31)
    return {
        "profile": profile, "seed": seed, "seeds": _seeds(seed, p.seeds),
        "config": {**asdict(p), "cusp": asdict(p.cusp)},
        "params": params, "runs": runs, "per_seed": per_seed,
        "filters": {"lambda": _LAMBDA.tolist(),
                    "response": {r: {b: np.mean(v, axis=0).tolist() for b, v in bands.items()}
                                 for r, bands in responses.items()}},
        "curvature": {"bins": bins.tolist(),
                      "hist": {k: np.histogram(v, bins=bins)[0].tolist() for k, v in curv.items()},
                      "mean": {k: float(np.mean(v)) for k, v in curv.items()}},
    }
