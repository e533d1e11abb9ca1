"""Do product-space random forests beat random forests on the ambient coordinates? (Chlenski et al., ICML 2025)

The paper's claim: on mixed-curvature data, a forest whose splits are geodesically convex in each
factor of the product (:mod:`moescope.curved_models.product_forest`) is more accurate than
scikit-learn's forest on the same points' ambient coordinates. Both forests here have the same number of
trees, the same depth, bootstrap and per-split feature sampling (``max_features="sqrt"`` of their own
features); only the splits differ. Three data sets, each labelled by where points sit:

* ``tree``: Sarkar's embedding (:func:`~moescope.geometry.curved.sarkar.sarkar_embedding`, ε = 1) of the
  ternary tree of depth 4 in H²; a node's label is its depth-2 ancestor (9 subtrees), nodes of depth ≥ 2;
* ``ring-of-trees``: a 12-cycle each of whose nodes roots a binary tree of depth 3 (as
  :func:`~moescope.geometry.curved.graphs.ring_of_trees`), embedded exactly in H² × S¹ — the cycle on
  the circle (node r at angle 2πr/12), each rooted tree by Sarkar in H²; label: the community (4 arcs of
  3 ring nodes) × the branch of the rooted tree (8 classes), ring nodes themselves left out;
* ``mixture``: the paper's synthetic benchmark, a wrapped-normal mixture on H² × E² × S² — 4 class
  means drawn on the product, points exp_μ(v) of Gaussian tangent vectors (std 0.75 at the origin, moved to
  μ by parallel transport: the wrapped normal) — redrawn per seed.

Per seed: a stratified 70/30 split of each data set and both forests' randomness. Effect: the
accuracy difference averaged over the data sets, paired over seeds (claim 17).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from moescope.curved_models.product_forest import (
    ProductSpaceRandomForest,
    count_params,
    euclidean_twin,
    max_params,
)
from moescope.geometry.curved import lorentz
from moescope.geometry.curved.product import parse_signature
from moescope.geometry.curved.sarkar import sarkar_embedding

__all__ = ["DATASETS", "PROFILES", "Profile", "run_product_forests"]

DATASETS = ("tree", "ring-of-trees", "mixture")


@dataclass(frozen=True)
class Profile:
    seeds: int
    n_estimators: int
    max_depth: int
    mixture_points: int


PROFILES = {
    "quick": Profile(seeds=5, n_estimators=24, max_depth=6, mixture_points=300),
    "full": Profile(seeds=10, n_estimators=100, max_depth=8, mixture_points=600),
}
TEST_FRACTION = 0.3
SARKAR_EPS = 1.0          # worst-case distortion 2: τ ≈ 3.5, keeps depth-4 points 1e-6 inside the disk
MIXTURE_CLASSES = 4
MIXTURE_STD = 0.75        # tangent noise: classes overlap enough that neither forest is perfect


@dataclass(frozen=True)
class Dataset:
    name: str
    signature: str
    hyperbolic: str           # how the product forest reads the H factor's columns
    features: np.ndarray      # (n, width) what the product forest sees
    ambient: np.ndarray       # (n, ambient width) Lorentz / sphere / flat coordinates: the twin's features
    labels: np.ndarray        # (n,)


def _sarkar_points(tree: nx.Graph, root: object) -> tuple[np.ndarray, dict]:
    emb = sarkar_embedding(tree, eps=SARKAR_EPS, root=root)
    return emb.to_tensor(torch.float64).numpy(), {v: i for i, v in enumerate(emb.nodes)}


def _ambient_h(points: np.ndarray) -> np.ndarray:
    """Poincaré-disk points (n, 2) → hyperboloid coordinates (n, 3)."""
    return lorentz.from_poincare(torch.from_numpy(points)).numpy()


def _tree_dataset() -> Dataset:
    tree = nx.balanced_tree(3, 4)
    pts, index = _sarkar_points(tree, 0)
    paths = nx.single_source_shortest_path(tree, 0)
    nodes = [v for v in tree if len(paths[v]) >= 3]            # depth >= 2
    rows = [index[v] for v in nodes]
    labels = np.unique([paths[v][2] for v in nodes], return_inverse=True)[1]
    return Dataset("tree", "H2", "poincare", pts[rows], _ambient_h(pts[rows]), labels)


def _ring_of_trees_dataset(ring: int = 12, communities: int = 4) -> Dataset:
    local = nx.balanced_tree(2, 3)
    pts, index = _sarkar_points(local, 0)
    paths = nx.single_source_shortest_path(local, 0)
    h, s, labels = [], [], []
    for r in range(ring):
        angle = 2.0 * math.pi * r / ring
        for v in local:
            if v == 0:
                continue                                       # the ring node itself: no branch
            h.append(pts[index[v]])
            s.append((math.cos(angle), math.sin(angle)))
            labels.append((r * communities // ring) * 2 + (paths[v][1] - 1))
    h, s = np.array(h), np.array(s)
    return Dataset("ring-of-trees", "H2xS1", "poincare", np.hstack([h, s]), np.hstack([_ambient_h(h), s]),
                   np.array(labels))


def _mixture_dataset(n: int, seed: int) -> Dataset:
    m = parse_signature("H2xE2xS2", hyperbolic="lorentz")
    g = torch.Generator().manual_seed(seed)
    means = m.random(MIXTURE_CLASSES, std=1.0, generator=g)
    labels = torch.randint(0, MIXTURE_CLASSES, (n,), generator=g)
    mu = means[labels]
    origin = m.origin(n)
    v0 = m.proju(origin, MIXTURE_STD * torch.randn(n, m.width, generator=g, dtype=torch.float64))
    x = m.projx(m.expmap(mu, m.transp(origin, mu, v0))).numpy()     # wrapped normal (Nagano et al. 2019)
    return Dataset("mixture", "H2xE2xS2", "lorentz", x, x, labels.numpy())


def _evaluate(data: Dataset, prof: Profile, seed: int) -> dict:
    idx = np.arange(len(data.labels))
    train, test = train_test_split(idx, test_size=TEST_FRACTION, random_state=seed, stratify=data.labels)
    forest = ProductSpaceRandomForest(data.signature, hyperbolic=data.hyperbolic, n_estimators=prof.n_estimators,
                                      max_depth=prof.max_depth, random_state=seed)
    twin = euclidean_twin(forest, random_state=seed)
    forest.fit(data.features[train], data.labels[train])
    twin.fit(data.ambient[train], data.labels[train])
    same = euclidean_twin(forest, random_state=seed)        # the product forest's own columns, axis splits
    same.fit(data.features[train], data.labels[train])
    y = data.labels[test]
    return {"product": float((forest.predict(data.features[test]) == y).mean()),
            "ambient": float((twin.predict(data.ambient[test]) == y).mean()),
            "same_columns": float((same.predict(data.features[test]) == y).mean()),
            "params_product": count_params(forest), "params_ambient": count_params(twin),
            "n_train": len(train), "n_test": len(test)}


def run_product_forests(profile: str = "quick", seed: int = 0) -> dict:
    """Product-space vs ambient random forests on three mixed-curvature data sets, over seeds; JSON-ready.

    Returns {"profile", "seed", "seeds", "datasets": {name: {"signature", "n", "classes", "product": [acc per
    seed], "ambient": [...], "same_columns": [scikit-learn's forest on the product forest's own input columns],
    "params_product": [...], "params_ambient": [...]}}, "product_mean": [per seed, mean over data sets],
    "ambient_mean": [...], "same_columns_mean": [...], "capacity": the most parameters either forest can have,
    "n_estimators", "max_depth", "seconds"}.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}; got profile={profile!r}")
    prof = PROFILES[profile]
    start = time.perf_counter()
    seeds = [seed * 1000 + i for i in range(prof.seeds)]
    fixed = [_tree_dataset(), _ring_of_trees_dataset()]
    out = {name: {"product": [], "ambient": [], "same_columns": [], "params_product": [], "params_ambient": []}
           for name in DATASETS}
    capacity = {}
    for s in seeds:
        for data in (*fixed, _mixture_dataset(prof.mixture_points, s)):
            r = _evaluate(data, prof, s)
            d = out[data.name]
            for key in ("product", "ambient", "same_columns", "params_product", "params_ambient"):
                d[key].append(r[key])
            classes = len(np.unique(data.labels))
            d.update(signature=data.signature, n=len(data.labels), classes=classes,
                     n_test=r["n_test"], ambient_width=int(data.ambient.shape[1]),
                     product_features=int(data.features.shape[1]))
            probe = ProductSpaceRandomForest(n_estimators=prof.n_estimators, max_depth=prof.max_depth)
            capacity[data.name] = max_params(probe, classes)
    product_mean = [float(np.mean([out[n]["product"][i] for n in DATASETS])) for i in range(len(seeds))]
    ambient_mean = [float(np.mean([out[n]["ambient"][i] for n in DATASETS])) for i in range(len(seeds))]
    same_mean = [float(np.mean([out[n]["same_columns"][i] for n in DATASETS])) for i in range(len(seeds))]
    return {"profile": profile, "seed": seed, "seeds": seeds, "datasets": out, "product_mean": product_mean,
            "ambient_mean": ambient_mean, "same_columns_mean": same_mean, "capacity": capacity,
            "n_estimators": prof.n_estimators,
            "max_depth": prof.max_depth, "test_fraction": TEST_FRACTION,
            "seconds": time.perf_counter() - start}
