r"""Product-space decision trees and random forests (Chlenski et al., ICML 2025), as scikit-learn estimators.

Chlenski, Chu, Bao, Moretti & Pe'er, "Mixed-curvature decision trees and random forests"
(ICML 2025; reference code: ``manify`` 0.1 ``predictors/decision_tree.py``, and HyperDT for one
hyperbolic factor). A point of :math:`M = M_1\times\dots\times M_K` is given in ambient coordinates
(hyperboloid and sphere factors carry one extra, first coordinate :math:`x_0`). Every split acts on one
factor and is geodesically convex in it, so each leaf is an intersection of geodesically convex sets:

* **hyperbolic** factor :math:`\mathbb L^n_c`: the hyperplane through the origin
  :math:`\{x : x_0\cos\theta - x_d\sin\theta = 0\}`, i.e. a constant angle
  :math:`\theta = \operatorname{atan2}(x_0, x_d)`, meets the hyperboloid in a totally geodesic
  submanifold. Because :math:`x_0 > |x_d|`, the angle lies in :math:`(\pi/4, 3\pi/4)` and a split on it
  is a threshold on :math:`k_d = x_d/x_0 = \cot\theta` — the Klein coordinate, in which geodesics are
  straight. This module thresholds :math:`k_d` (same splits, no trigonometry). Between two sorted
  neighbours the threshold is their **geodesic midpoint** along the :math:`d`-axis geodesic
  :math:`(\cosh t, \sinh t)`, where :math:`k = \tanh t`:
  :math:`t^* = \operatorname{tanh}\!\big(\tfrac12(\operatorname{artanh}k_a + \operatorname{artanh}k_b)\big)`
  (manify's and HyperDT's closed form ``hyperbolic_midpoint``, written in :math:`k`). Curvature does not
  move it: the angle is scale-free;
* **spherical** factor :math:`S^n_c`: the same hyperplanes, now a great sphere; the angle
  :math:`\varphi = \operatorname{atan2}(x_0, x_d)` ranges over the whole circle and a split sends
  :math:`\varphi \in [\theta, \theta + \pi)` (mod 2π) to the left — a hemisphere. Candidates: the arc
  midpoint (the geodesic midpoint on the great circle) of each pair of circular neighbours;
* **Euclidean** factor: axis-aligned thresholds at the arithmetic midpoint ``a/2 + b/2`` (scikit-learn's rule).

The best split maximises the impurity decrease (Gini or entropy) over all factors' features. Equal
decreases are common in small nodes (two features often cut off the same samples), so the winner is a
stated convention, ``ties``: the first feature considered, then the lowest threshold (default); or
manify's or HyperDT's order, which make those oracles' trees reproducible split for split. A node splits only when the
decrease is positive (manify's rule; scikit-learn also splits at zero decrease) and its weighted
decrease :math:`\tfrac{n_t}{n}\Delta` reaches ``min_impurity_decrease`` (scikit-learn's rule).

Deviations from manify 0.1, stated. manify scores a spherical candidate on the arc
:math:`(\varphi_n-\pi, \varphi_n]` but predicts with the hemisphere through the midpoint
:math:`\theta`, which differ on samples within half a gap of the antipode, and takes the "nearest"
neighbour by |Δφ| without wrapping. Here the neighbour is circular and a candidate is kept only when the
arc and the hemisphere hold the same samples, so fit and predict agree; on a factor whose points fill
less than a half-circle (a cap) this is manify's candidate set exactly. manify ignores
``min_samples_leaf``; here it is honoured.

The forest bags trees on bootstrap samples. ``feature_sampling="split"`` draws ``max_features`` candidate
features at every node (Breiman; scikit-learn); ``"tree"`` draws them once per tree (manify's
``ProductSpaceRF``), and with an integer ``random_state`` it consumes a ``torch.Generator`` exactly as
manify consumes torch's global generator, so the two forests agree tree for tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from moescope.geometry.curved.product import ProductManifold, parse_signature

__all__ = [
    "ProductSpaceDecisionTree",
    "ProductSpaceRandomForest",
    "SplitSpace",
    "TreeArrays",
    "count_params",
    "euclidean_twin",
    "hyperbolic_midpoint",
    "max_params",
]

HYPERBOLIC_MODELS = ("lorentz", "poincare")
CRITERIA = ("gini", "entropy")
FEATURE_SAMPLING = ("split", "tree")
TIES = ("first", "last", "sample")
_TIE = 1e-12          # impurity decreases closer than this are ties (rounding of equal count fractions)
_TWO_PI = 2.0 * math.pi
_ANTIPODE = 1e-9      # a sample this close to φ_k − π is antipodal to φ_k (rounding of exact antipodes)


def hyperbolic_midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r"""Klein coordinate of the geodesic midpoint of Klein coordinates ``a`` and ``b`` on one axis geodesic.

    The geodesic :math:`(\cosh t, \sinh t)` of the :math:`(x_0, x_d)` plane has :math:`k = \tanh t`,
    so the midpoint is :math:`\tanh\big((\operatorname{artanh} a + \operatorname{artanh} b)/2\big)`.
    Shapes: any, broadcast; |a|, |b| < 1.
    """
    return np.tanh(0.5 * (np.arctanh(a) + np.arctanh(b)))


@dataclass(frozen=True)
class SplitSpace:
    """The product the data live in, and how its ambient coordinates become split features.

    ``signature`` None: every column is a Euclidean feature (the estimator is then a plain CART tree,
    which is what scikit-learn's ``check_estimator`` runs on). Otherwise e.g. ``"H2xE2xS2"``
    (:func:`~moescope.geometry.curved.product.parse_signature`), with one curvature magnitude per factor;
    ``hyperbolic`` says whether H factors arrive as hyperboloid (n + 1 columns, time first) or
    Poincaré-ball (n columns) coordinates.
    """

    signature: str | None = None
    curvatures: tuple[float, ...] | None = None
    hyperbolic: str = "lorentz"
    manifold: ProductManifold | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hyperbolic not in HYPERBOLIC_MODELS:
            raise ValueError(f"hyperbolic must be one of {HYPERBOLIC_MODELS}; got hyperbolic={self.hyperbolic!r}")
        if self.signature is None:
            if self.curvatures is not None:
                raise ValueError(f"curvatures={self.curvatures!r} needs a signature (e.g. 'H2xS1'); got None")
            object.__setattr__(self, "manifold", None)
            return
        if self.curvatures is not None:
            cs = tuple(self.curvatures)
            if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0
                       for c in cs):
                raise ValueError(f"curvatures must be positive finite magnitudes, one per factor; got {cs!r}")
            object.__setattr__(self, "curvatures", tuple(float(c) for c in cs))
        object.__setattr__(self, "manifold", parse_signature(self.signature, curvatures=self.curvatures,
                                                             hyperbolic=self.hyperbolic))

    def n_features(self, width: int) -> int:
        """Split features (the intrinsic dimension) for data with ``width`` columns."""
        return width if self.manifold is None else self.manifold.dim

    def features(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, width) ambient coordinates → ((n, d) features, (d,) kinds: 'E', 'H' or 'S').

        E: the coordinate; H: the Klein coordinate :math:`x_d/x_0` (Poincaré input p:
        :math:`2\\sqrt c\\,p_d/(1 + c\\lVert p\\rVert^2)`, which stays exact near the ball's edge);
        S: the angle :math:`\\operatorname{atan2}(x_0, x_d)`. Raises ValueError off the manifold.
        """
        if self.manifold is None:
            return X, np.array(["E"] * X.shape[1])
        m = self.manifold
        if X.shape[1] != m.width:
            raise ValueError(f"points of {m.name} ({self.hyperbolic} H factors) have {m.width} coordinates; "
                             f"got X with {X.shape[1]} columns")
        m.check(torch.from_numpy(X), name="X")
        cols, kinds = [], []
        for (factor, n), part in zip(m.factors, m.split(torch.from_numpy(X)), strict=True):
            x = part.numpy()
            if factor.name == "E":
                cols.append(x)
            elif factor.name == "S":
                cols.append(np.arctan2(x[:, :1], x[:, 1:]))
            elif self.hyperbolic == "lorentz":
                cols.append(x[:, 1:] / x[:, :1])
            else:
                sc = math.sqrt(float(factor.c))
                cols.append(2.0 * sc * x / (1.0 + sc * sc * np.square(x).sum(1, keepdims=True)))
            kinds += [factor.name] * n
        return np.concatenate(cols, axis=1), np.array(kinds)


# ------------------------------------------------------------------ the tree as arrays, and its growth

@dataclass
class TreeArrays:
    """A fitted tree, node 0 the root. Internal nodes: ``feature`` >= 0 and a ``threshold``; leaves: −1.

    ``value`` (nodes, C) holds each node's class frequencies; ``kind[feature]`` says how to compare.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    depth: int

    @property
    def node_count(self) -> int:
        return len(self.feature)

    @property
    def n_leaves(self) -> int:
        return int((self.feature < 0).sum())

    def apply(self, F: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """Leaf index of each row of the features ``F`` (n, d): (n,)."""
        node = np.zeros(len(F), dtype=np.int64)
        active = np.flatnonzero(self.feature[node] >= 0)
        while active.size:
            nd = node[active]
            f, t = self.feature[nd], self.threshold[nd]
            v = F[active, f]
            left = np.where(kinds[f] == "S", np.mod(v - t, _TWO_PI) < math.pi, v <= t)
            node[active] = np.where(left, self.left[nd], self.right[nd])
            active = active[self.feature[node[active]] >= 0]
        return node


def _impurity(counts: np.ndarray, criterion: str) -> np.ndarray:
    """Gini or entropy of class counts (..., C), 0 for empty rows."""
    n = counts.sum(-1, keepdims=True)
    p = counts / np.maximum(n, 1)
    if criterion == "gini":
        return 1.0 - np.square(p).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(-1)


def _candidates(v: np.ndarray, onehot: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (k,) of one feature, the class counts (k, C) each sends left, and each one's anchor (k,).

    The anchor is the first row (in node order) holding the largest value the split sends right's way
    boundary: the sample manify 0.1 indexes the candidate by, which its tie-breaking reads.
    """
    if kind == "S":
        s, inverse = np.unique(v, return_inverse=True)
        empty = np.empty(0), np.empty((0, onehot.shape[1])), np.empty(0, dtype=np.int64)
        if s.size < 2:
            return empty
        first = np.full(s.size, len(v), dtype=np.int64)
        np.minimum.at(first, inverse, np.arange(len(v)))
        gap = np.diff(np.append(s, s[0] + _TWO_PI))
        theta = np.mod(s + 0.5 * gap + math.pi, _TWO_PI) - math.pi      # circular midpoint, in [−π, π)
        left = np.mod(v[None, :] - theta[:, None], _TWO_PI) < math.pi      # (k, m): the hemisphere [θ, θ+π)
        back = np.mod(s[:, None] - v[None, :], _TWO_PI)                    # (k, m): how far each sample lies below φ_k
        arc = back < math.pi                                                # manify's arc (φ_k − π, φ_k]
        antipodal = np.abs(back - math.pi) <= _ANTIPODE                     # on the arc's open end, up to rounding
        keep = ((left != arc) | antipodal).all(1)                           # no sample in the half-gap sliver
        if not keep.any():
            return empty
        return theta[keep], left[keep].astype(np.float64) @ onehot, first[keep]
    order = np.argsort(v, kind="stable")
    vs, cum = v[order], np.cumsum(onehot[order], axis=0)
    last = np.flatnonzero(vs[1:] > vs[:-1])             # position i: left = sorted[: i + 1]
    first = np.minimum.reduceat(order, np.append(0, last + 1))[1:]
    a, b = vs[last], vs[last + 1]
    t = hyperbolic_midpoint(a, b) if kind == "H" else a / 2.0 + b / 2.0
    t = np.where((t >= b) | (t < a), a, t)               # a rounded midpoint must still separate a from b
    return t, cum[last], first


@dataclass(frozen=True)
class _Growth:
    criterion: str
    max_depth: int | None
    min_samples_split: int
    min_samples_leaf: int
    min_impurity_decrease: float
    ties: str


def _tie_key(ties: str, rank: int, position: int, anchor: int, kind: str) -> tuple[int, int]:
    """Smaller wins among equal decreases: ``rank`` of the feature in the order considered, ``position``
    of the threshold in that feature's ascending candidates, ``anchor`` the candidate's sample (manify).

    HyperDT scans angles upwards, and the angle falls as the Klein coordinate rises: its last
    candidate on an H feature is the lowest threshold here."""
    if ties == "first":
        return rank, position
    if ties == "last":
        return -rank, position if kind == "H" else -position
    return anchor, rank


def grow_tree(F: np.ndarray, kinds: np.ndarray, y: np.ndarray, n_classes: int, growth: _Growth,
              features: Callable[[], Sequence[int]]) -> TreeArrays:
    """Grow one tree on features ``F`` (m, d) and encoded labels ``y`` (m,) in 0..C−1.

    ``features()`` returns the features a node may split on, in the order ties are broken
    (all of them for a single tree; a random subset per node or per tree in a forest).
    """
    onehot = np.eye(n_classes)[y]
    n_total = len(y)
    feat, thr, lft, rgt, val = [], [], [], [], []
    stack = [(np.arange(n_total), 0, -1, False)]       # (rows, depth, parent, is_right)
    max_seen = 0
    while stack:
        rows, depth, parent, is_right = stack.pop()
        node = len(feat)
        if parent >= 0:
            (rgt if is_right else lft)[parent] = node
        counts = onehot[rows].sum(0)
        feat.append(-1)
        thr.append(0.0)
        lft.append(-1)
        rgt.append(-1)
        val.append(counts / counts.sum())
        max_seen = max(max_seen, depth)
        m = len(rows)
        if (growth.max_depth is not None and depth >= growth.max_depth) or m < growth.min_samples_split \
                or m < 2 * growth.min_samples_leaf or counts.max() == m:
            continue
        parent_imp = float(_impurity(counts, growth.criterion))
        found = []                                     # per feature: (gain, feature, thresholds, anchors, rank)
        for rank, f in enumerate(features()):
            t, left_counts, anchor = _candidates(F[rows, f], onehot[rows], kinds[f])
            n_left = left_counts.sum(1)
            n_right = m - n_left
            ok = (n_left >= growth.min_samples_leaf) & (n_right >= growth.min_samples_leaf)
            if not ok.any():
                continue
            child = (n_left * _impurity(left_counts, growth.criterion)
                     + n_right * _impurity(counts - left_counts, growth.criterion)) / m
            found.append((np.where(ok, parent_imp - child, -math.inf), int(f), t, anchor, rank))
        if not found:
            continue
        top = max(float(g.max()) for g, *_ in found)
        key, gain, f, t = None, top, -1, 0.0
        for g, feature, thresholds, anchor, rank in found:
            for i in np.flatnonzero(g >= top - _TIE):
                k = _tie_key(growth.ties, rank, int(i), int(anchor[i]), kinds[feature])
                if key is None or k < key:
                    key, f, t = k, feature, float(thresholds[i])
        if gain <= _TIE or m / n_total * gain < growth.min_impurity_decrease - _TIE:
            continue
        v = F[rows, f]
        go_left = np.mod(v - t, _TWO_PI) < math.pi if kinds[f] == "S" else v <= t
        feat[node], thr[node] = f, t
        stack.append((rows[~go_left], depth + 1, node, True))    # popped second: left subtree first
        stack.append((rows[go_left], depth + 1, node, False))
    return TreeArrays(np.array(feat), np.array(thr), np.array(lft), np.array(rgt), np.array(val), max_seen)


# ------------------------------------------------------------------ scikit-learn estimators

def _check_int(name: str, value: object, low: int, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {low}{extra}; got {name}={value!r}")


class _ProductSpaceBase(ClassifierMixin, BaseEstimator):
    """Shared validation and feature extraction of the tree and the forest."""

    def _growth(self) -> _Growth:
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}; got criterion={self.criterion!r}")
        _check_int("max_depth", self.max_depth, 1, allow_none=True)
        _check_int("min_samples_split", self.min_samples_split, 2)
        _check_int("min_samples_leaf", self.min_samples_leaf, 1)
        mid = self.min_impurity_decrease
        if isinstance(mid, bool) or not isinstance(mid, (int, float)) or not (mid >= 0 and math.isfinite(mid)):
            raise ValueError(f"min_impurity_decrease must be a finite number >= 0; got {mid!r}")
        if self.ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}; got ties={self.ties!r}")
        return _Growth(self.criterion, self.max_depth, int(self.min_samples_split), int(self.min_samples_leaf),
                       float(mid), self.ties)

    def _space(self) -> SplitSpace:
        cs = None if self.curvatures is None else tuple(self.curvatures)
        return SplitSpace(self.signature, cs, self.hyperbolic)

    def _fit_inputs(self, X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        self.space_ = self._space()
        F, self.kinds_ = self.space_.features(X)
        return F, y_enc, self.kinds_

    def _features(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.space_.features(X)[0]

    def predict(self, X) -> np.ndarray:
        """Class labels (n,) of ambient points X (n, width): the most probable class."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class ProductSpaceDecisionTree(_ProductSpaceBase):
    """A decision tree whose splits are geodesically convex in each factor of a product manifold.

    API: ``ProductSpaceDecisionTree("H2xE2xS2", max_depth=5).fit(X, y).predict(X)``; X (n, width) ambient
    coordinates in the factor order of the signature, y (n,) class labels.

    Args:
        signature: product such as ``"H2xE2xS2"``; None: all columns Euclidean (a plain CART tree).
        curvatures: one magnitude c > 0 per factor (validation of the points only: splits are scale-free).
        hyperbolic: coordinates of H factors, ``"lorentz"`` (hyperboloid, time first) or ``"poincare"``.
        criterion: ``"gini"`` or ``"entropy"``.
        max_depth: None grows until leaves are pure or too small.
        min_samples_split, min_samples_leaf, min_impurity_decrease: scikit-learn's meanings.
        ties: which of several splits with equal impurity decrease wins (a convention, not geometry):
            ``"first"`` the first feature considered, then the lowest threshold (scikit-learn's order when
            its features are not shuffled); ``"sample"`` the candidate anchored at the earliest sample,
            then the first feature (manify 0.1); ``"last"`` the last feature, then the largest angle (HyperDT).

    Fitted: ``classes_``, ``n_features_in_``, ``tree_`` (:class:`TreeArrays`), ``space_``, ``kinds_``.
    """

    def __init__(self, signature: str | None = None, *, curvatures: Sequence[float] | None = None,
                 hyperbolic: str = "lorentz", criterion: str = "gini", max_depth: int | None = None,
                 min_samples_split: int = 2, min_samples_leaf: int = 1, min_impurity_decrease: float = 0.0,
                 ties: str = "first"):
        self.signature = signature
        self.curvatures = curvatures
        self.hyperbolic = hyperbolic
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_impurity_decrease = min_impurity_decrease
        self.ties = ties

    def fit(self, X, y) -> ProductSpaceDecisionTree:
        growth = self._growth()
        F, y_enc, kinds = self._fit_inputs(X, y)
        every = tuple(range(F.shape[1]))
        self.tree_ = grow_tree(F, kinds, y_enc, len(self.classes_), growth, lambda: every)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class frequencies of the leaf each point reaches: (n, n_classes), columns in ``classes_`` order."""
        F = self._features(X)
        return self.tree_.value[self.tree_.apply(F, self.kinds_)]


def _n_sampled(max_features: object, d: int) -> int:
    """scikit-learn's ``max_features`` rule: None → d, "sqrt" → ⌊√d⌋, "log2" → ⌊log₂ d⌋, int, or fraction."""
    if max_features is None:
        return d
    if max_features == "sqrt":
        return max(1, int(math.sqrt(d)))
    if max_features == "log2":
        return max(1, int(math.log2(d)))
    if isinstance(max_features, (int, np.integer)) and not isinstance(max_features, bool):
        if not 1 <= max_features <= d:
            raise ValueError(f"max_features must lie in [1, {d}] (the split features); got {max_features!r}")
        return int(max_features)
    if isinstance(max_features, float) and 0.0 < max_features <= 1.0:
        return max(1, int(max_features * d))
    raise ValueError(f"max_features must be None, 'sqrt', 'log2', an int in [1, {d}] or a float in (0, 1]; "
                     f"got {max_features!r}")


class ProductSpaceRandomForest(_ProductSpaceBase):
    """Bagged :class:`ProductSpaceDecisionTree` s; class probabilities are the trees' mean.

    API: ``ProductSpaceRandomForest("H2xS1", n_estimators=24, max_depth=6, random_state=0).fit(X, y)``.

    Args (beyond the tree's): ``n_estimators``; ``max_features`` (scikit-learn's rule, over the
    intrinsic split features); ``feature_sampling`` ``"split"`` (per node, as scikit-learn) or ``"tree"``
    (once per tree, as manify); ``bootstrap`` (n draws with replacement per tree); ``random_state``
    (int, RandomState or None: it seeds a ``torch.Generator``, which every draw uses).

    Fitted: ``estimators_`` (list of :class:`TreeArrays`), ``features_`` (each tree's features or None).
    """

    def __init__(self, signature: str | None = None, *, curvatures: Sequence[float] | None = None,
                 hyperbolic: str = "lorentz", n_estimators: int = 100, criterion: str = "gini",
                 max_depth: int | None = None, min_samples_split: int = 2, min_samples_leaf: int = 1,
                 min_impurity_decrease: float = 0.0, max_features: object = "sqrt",
                 feature_sampling: str = "split", bootstrap: bool = True, random_state: object = None,
                 ties: str = "first"):
        self.signature = signature
        self.curvatures = curvatures
        self.hyperbolic = hyperbolic
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_impurity_decrease = min_impurity_decrease
        self.max_features = max_features
        self.feature_sampling = feature_sampling
        self.bootstrap = bootstrap
        self.random_state = random_state
        self.ties = ties

    def _generator(self) -> torch.Generator:
        rs = self.random_state
        if isinstance(rs, (int, np.integer)) and not isinstance(rs, bool):
            seed = int(rs)
        else:
            seed = int(check_random_state(rs).randint(np.iinfo(np.int32).max))
        return torch.Generator().manual_seed(seed)

    def fit(self, X, y) -> ProductSpaceRandomForest:
        growth = self._growth()
        _check_int("n_estimators", self.n_estimators, 1)
        if self.feature_sampling not in FEATURE_SAMPLING:
            raise ValueError(f"feature_sampling must be one of {FEATURE_SAMPLING}; "
                             f"got feature_sampling={self.feature_sampling!r}")
        F, y_enc, kinds = self._fit_inputs(X, y)
        n, d = F.shape
        k = _n_sampled(self.max_features, d)
        g = self._generator()
        # manify's order of draws: every bootstrap first, then every tree's feature subset
        rows = (torch.randint(0, n, (self.n_estimators, n), generator=g).numpy() if self.bootstrap
                else np.broadcast_to(np.arange(n), (self.n_estimators, n)))
        per_tree = ([torch.randperm(d, generator=g)[:k].numpy() for _ in range(self.n_estimators)]
                    if self.feature_sampling == "tree" else [None] * self.n_estimators)

        def per_split() -> np.ndarray:
            return torch.randperm(d, generator=g)[:k].numpy()

        self.estimators_, self.features_ = [], per_tree
        for r, fs in zip(rows, per_tree, strict=True):
            chosen = tuple(int(f) for f in fs) if fs is not None else None
            sampler = (lambda c=chosen: c) if chosen is not None else per_split
            self.estimators_.append(grow_tree(F[r], kinds, y_enc[r], len(self.classes_), growth, sampler))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Mean over trees of each tree's leaf class frequencies: (n, n_classes)."""
        F = self._features(X)
        return np.mean([t.value[t.apply(F, self.kinds_)] for t in self.estimators_], axis=0)


# ------------------------------------------------------------------ the Euclidean twin and its size

def euclidean_twin(model: ProductSpaceDecisionTree | ProductSpaceRandomForest, *, random_state: object = None
                   ) -> DecisionTreeClassifier | RandomForestClassifier:
    """scikit-learn's tree or forest with the same hyperparameters, to be fitted on the ambient coordinates.

    Same criterion, depth, leaf and split sizes, number of trees, bootstrap and ``max_features`` rule
    (per split); it sees the ambient columns (one more per curved factor) as flat features.
    """
    common = {"criterion": model.criterion, "max_depth": model.max_depth,
              "min_samples_split": model.min_samples_split, "min_samples_leaf": model.min_samples_leaf,
              "min_impurity_decrease": model.min_impurity_decrease}
    if isinstance(model, ProductSpaceDecisionTree):
        return DecisionTreeClassifier(**common, random_state=random_state)
    if isinstance(model, ProductSpaceRandomForest):
        return RandomForestClassifier(n_estimators=model.n_estimators, max_features=model.max_features,
                                      bootstrap=model.bootstrap, random_state=random_state, **common)
    raise TypeError(f"model must be a ProductSpaceDecisionTree or ProductSpaceRandomForest; got {type(model)}")


def _tree_params(n_internal: int, n_leaves: int, n_classes: int) -> int:
    return 2 * n_internal + n_classes * n_leaves        # (feature, threshold) per split; class frequencies per leaf


def count_params(model) -> int:
    """Fitted parameters: two per split node (feature, threshold) and one per class per leaf, over all trees.

    Works for the product-space estimators and scikit-learn's tree and forest (their twins).
    """
    check_is_fitted(model)
    c = len(model.classes_)
    if isinstance(model, ProductSpaceDecisionTree):
        trees = [(model.tree_.node_count - model.tree_.n_leaves, model.tree_.n_leaves)]
    elif isinstance(model, ProductSpaceRandomForest):
        trees = [(t.node_count - t.n_leaves, t.n_leaves) for t in model.estimators_]
    else:
        sk = [model] if isinstance(model, DecisionTreeClassifier) else list(model.estimators_)
        trees = [(int(t.tree_.node_count - t.tree_.n_leaves), int(t.tree_.n_leaves)) for t in sk]
    return sum(_tree_params(i, leaves, c) for i, leaves in trees)


def max_params(model, n_classes: int) -> int:
    """The most parameters the (unfitted) model can have: full binary trees of ``max_depth``, times the trees.

    Trees grow to the data, so fitted counts differ; this capacity is what the twin matches exactly.
    """
    if model.max_depth is None:
        raise ValueError("max_params needs a finite max_depth; got max_depth=None")
    per_tree = _tree_params(2 ** model.max_depth - 1, 2 ** model.max_depth, n_classes)
    return per_tree * getattr(model, "n_estimators", 1)

