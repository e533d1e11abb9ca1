"""Product-space trees and forests against manify 0.1, HyperDT and scikit-learn, and on planted signals.

Oracles, each reproduced prediction for prediction on held-out points:

* manify 0.1's ``ProductSpaceDT`` on H²×E²×S² (its tie order, ``ties="sample"``) and ``ProductSpaceRF``
  (per-tree features, its torch draws: identical class probabilities);
* HyperDT's ``HyperbolicDecisionTreeClassifier`` on one hyperboloid factor (``ties="last"``);
* scikit-learn's ``DecisionTreeClassifier`` on one Euclidean factor (the default ties).

manify 0.1's tree calls ``_get_split(..., n=n, d=d)``, which that function does not accept, so every fit
that splits raises TypeError; the tests wrap the function to drop the two unused arguments and change
nothing else. No new differentiable hyperbolic operation is introduced (splits are thresholds), so the
gradient checks of the brief have nothing to check here; the one new formula, the geodesic midpoint,
is checked against distances on the hyperboloid and against HyperDT's and manify's closed forms.
"""

import math
import warnings

import networkx as nx
import numpy as np
import pytest
import torch
from sklearn.tree import DecisionTreeClassifier

from moescope.curved_models.product_forest import (
    ProductSpaceDecisionTree,
    ProductSpaceRandomForest,
    SplitSpace,
    count_params,
    euclidean_twin,
    hyperbolic_midpoint,
    max_params,
)
from moescope.geometry.curved import lorentz
from moescope.geometry.curved.product import parse_signature
from moescope.geometry.curved.sarkar import sarkar_embedding

SIG = "H2xE2xS2"


def _product_data(signature: str, n: int, seed: int, std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Points on the product (sphere factors on the cap x₀ ≥ 0) with labels from a noisy linear rule."""
    g = torch.Generator().manual_seed(seed)
    m = parse_signature(signature, hyperbolic="lorentz")
    parts = []
    for (f, _), p in zip(m.factors, m.split(m.random(n, std=std, generator=g)), strict=True):
        if f.name == "S":
            p = torch.cat([p[:, :1].abs(), p[:, 1:]], dim=1)
        parts.append(p)
    x = torch.cat(parts, dim=1)
    w = torch.randn(x.shape[1], generator=g, dtype=torch.float64)
    noise = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    y = (x @ w + noise > 0).long() + (x[:, -1] > 0.3).long()
    return x.numpy(), y.numpy()


@pytest.fixture
def manify_tree(manify_module, monkeypatch):
    dt = manify_module("predictors.decision_tree")
    original = dt._get_split
    monkeypatch.setattr(dt, "_get_split", lambda mask, angles, comparisons, labels, **_: original(
        mask, angles, comparisons, labels))
    return dt


@pytest.fixture
def manify_pm(manify_module):
    return manify_module("manifolds").ProductManifold(signature=[(-1.0, 2), (0.0, 2), (1.0, 2)])


# ------------------------------------------------------------------ the geodesic midpoint

def test_hyperbolic_midpoint_is_equidistant_on_the_hyperboloid():
    rng = np.random.default_rng(0)
    ta, tb = rng.uniform(-3, 3, 50), rng.uniform(-3, 3, 50)
    ka, kb = np.tanh(ta), np.tanh(tb)
    km = hyperbolic_midpoint(ka, kb)

    def on_axis(k):  # the point of the (x0, x1) geodesic with Klein coordinate k, in H²
        t = np.arctanh(k)
        return torch.tensor(np.stack([np.cosh(t), np.sinh(t), np.zeros_like(t)], 1))

    da = lorentz.dist(on_axis(ka), on_axis(km))
    db = lorentz.dist(on_axis(km), on_axis(kb))
    torch.testing.assert_close(da, db, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(da + db, lorentz.dist(on_axis(ka), on_axis(kb)), rtol=1e-10, atol=1e-10)


def test_hyperbolic_midpoint_matches_hyperdt_and_manify(manify_module):
    from hyperdt.hyperbolic_trig import _hyperbolic_midpoint

    mid = manify_module("predictors.midpoint")
    rng = np.random.default_rng(1)
    for _ in range(30):
        ka, kb = np.tanh(rng.uniform(-3, 3, 2))
        ua, ub = math.atan2(1.0, ka), math.atan2(1.0, kb)              # the angles atan2(x0, x_d)
        ours = math.atan2(1.0, float(hyperbolic_midpoint(ka, kb)))
        assert ours == pytest.approx(_hyperbolic_midpoint(ua, ub), abs=1e-9)
        assert ours == pytest.approx(float(mid.hyperbolic_midpoint(torch.tensor(ua, dtype=torch.float64),
                                                                    torch.tensor(ub, dtype=torch.float64))), abs=1e-9)


# ------------------------------------------------------------------ oracles

@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("depth", [3, 5])
def test_tree_matches_manify(manify_tree, manify_pm, seed, depth):
    x, y = _product_data(SIG, 200, seed)
    ref = manify_tree.ProductSpaceDT(pm=manify_pm, max_depth=depth)
    ref.fit(torch.tensor(x[:140]), torch.tensor(y[:140]))
    ours = ProductSpaceDecisionTree(SIG, max_depth=depth, ties="sample").fit(x[:140], y[:140])
    np.testing.assert_array_equal(ours.predict(x[140:]), ref.predict(torch.tensor(x[140:])).numpy())
    np.testing.assert_allclose(ours.predict_proba(x[140:]), ref.predict_proba(torch.tensor(x[140:])).numpy())


def test_forest_matches_manify_tree_for_tree(manify_tree, manify_pm):
    """manify draws every bootstrap, then each tree's ⌈√d⌉ features, from torch's seeded generator;
    feature_sampling="tree" with the same integer seed draws the same, so the probabilities agree exactly."""
    x, y = _product_data(SIG, 200, 3)
    with torch.random.fork_rng():
        ref = manify_tree.ProductSpaceRF(pm=manify_pm, max_depth=4, n_estimators=6, random_state=11)
        ref.fit(torch.tensor(x[:140]), torch.tensor(y[:140]))
        want = ref.predict_proba(torch.tensor(x[140:])).numpy()
    ours = ProductSpaceRandomForest(SIG, max_depth=4, n_estimators=6, max_features=math.ceil(math.sqrt(6)),
                                    feature_sampling="tree", ties="sample", random_state=11).fit(x[:140], y[:140])
    np.testing.assert_allclose(ours.predict_proba(x[140:]), want, atol=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_tree_matches_hyperdt_on_one_hyperboloid(seed):
    from hyperdt.tree import HyperbolicDecisionTreeClassifier

    x, y = _product_data("H3", 200, seed, std=1.5)
    for depth in (3, 5):
        # HyperDT stops at len(y) <= min_samples_split, scikit-learn (and we) at len(y) < min_samples_split
        ref = HyperbolicDecisionTreeClassifier(max_depth=depth, min_samples_split=1).fit(x[:140], y[:140])
        ours = ProductSpaceDecisionTree("H3", max_depth=depth, ties="last").fit(x[:140], y[:140])
        np.testing.assert_array_equal(ours.predict(x[140:]), ref.predict(x[140:]))


@pytest.mark.parametrize("depth", [3, None])
def test_tree_matches_sklearn_on_one_euclidean_factor(depth):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 1)).astype(np.float32).astype(np.float64)   # scikit-learn's trees work in float32
    y = (np.sin(3 * x[:, 0]) + 0.5 * rng.normal(size=300) > 0).astype(int)
    ref = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(x[:200], y[:200])
    ours = ProductSpaceDecisionTree("E1", max_depth=depth).fit(x[:200], y[:200])
    np.testing.assert_array_equal(ours.predict(x[200:]), ref.predict(x[200:]))
    assert ours.tree_.node_count == ref.tree_.node_count


# ------------------------------------------------------------------ geometry and planted signals

def test_poincare_and_lorentz_inputs_give_the_same_tree():
    x, y = _product_data("H2xE1", 150, 1, std=1.2)
    h = torch.from_numpy(x[:, :3])
    ball = np.hstack([lorentz.to_poincare(h).numpy(), x[:, 3:]])
    a = ProductSpaceDecisionTree("H2xE1", max_depth=4).fit(x, y)
    b = ProductSpaceDecisionTree("H2xE1", hyperbolic="poincare", max_depth=4).fit(ball, y)
    np.testing.assert_array_equal(a.tree_.feature, b.tree_.feature)
    np.testing.assert_allclose(a.tree_.threshold, b.tree_.threshold, rtol=1e-9, atol=1e-12)


def test_hemisphere_on_the_whole_sphere_is_one_split():
    """Uniform points on S² labelled by a great circle through the x₀ pole axis: one split, nearly exact."""
    g = torch.Generator().manual_seed(0)
    x = parse_signature("S2").random(600, generator=g).numpy()
    a = 2.0
    y = (x[:, 0] * math.cos(a) - x[:, 2] * math.sin(a) > 0).astype(int)
    tree = ProductSpaceDecisionTree("S2", max_depth=1).fit(x[:400], y[:400])
    assert (tree.predict(x[400:]) == y[400:]).mean() >= 0.98
    assert tree.tree_.feature[0] == 1


def test_forest_learns_subtrees_of_a_sarkar_tree():
    """Planted: a ternary tree's depth-1 subtree from its Sarkar embedding in the Poincaré disk."""
    tree = nx.balanced_tree(3, 4)
    emb = sarkar_embedding(tree, eps=1.0, root=0)
    paths = nx.single_source_shortest_path(tree, 0)
    nodes = [v for v in emb.nodes if v != 0]
    pts = emb.to_tensor().numpy()[[emb.nodes.index(v) for v in nodes]]
    y = np.array([paths[v][1] for v in nodes])
    idx = np.random.default_rng(0).permutation(len(y))
    tr, te = idx[:80], idx[80:]
    forest = ProductSpaceRandomForest("H2", hyperbolic="poincare", n_estimators=10, max_depth=4, random_state=0)
    assert (forest.fit(pts[tr], y[tr]).predict(pts[te]) == y[te]).mean() >= 0.95


def test_forest_is_deterministic_and_probabilities_sum_to_one():
    x, y = _product_data(SIG, 150, 2)
    kw = dict(n_estimators=5, max_depth=4, random_state=3)
    a = ProductSpaceRandomForest(SIG, **kw).fit(x, y).predict_proba(x)
    b = ProductSpaceRandomForest(SIG, **kw).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.sum(1), 1.0)


# ------------------------------------------------------------------ the twin

def test_euclidean_twin_matches_hyperparameters_and_capacity():
    x, y = _product_data(SIG, 150, 0)
    forest = ProductSpaceRandomForest(SIG, n_estimators=4, max_depth=3, min_samples_leaf=2, random_state=0)
    twin = euclidean_twin(forest, random_state=0)
    for key in ("n_estimators", "max_depth", "min_samples_leaf", "min_samples_split", "criterion",
                "max_features", "bootstrap", "min_impurity_decrease"):
        assert twin.get_params()[key] == forest.get_params()[key]
    forest.fit(x, y)
    twin.fit(x, y)
    c = len(np.unique(y))
    assert max_params(forest, c) == max_params(twin, c) == 4 * (2 * 7 + c * 8)
    assert 0 < count_params(forest) <= max_params(forest, c)
    assert 0 < count_params(twin) <= max_params(twin, c)
    tree = ProductSpaceDecisionTree("E3", max_depth=2).fit(x[:, 3:6], y)
    sk = euclidean_twin(tree).fit(x[:, 3:6], y)
    assert count_params(tree) == count_params(sk)      # one Euclidean factor: the same tree


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"signature": "H2xQ3"}, "cannot read signature"),
    ({"signature": "H2xS1", "curvatures": (1.0, -1.0)}, "curvatures must be positive"),
    ({"signature": None, "curvatures": (1.0,)}, "needs a signature"),
    ({"signature": "H2", "hyperbolic": "klein"}, "hyperbolic must be one of"),
])
def test_bad_space_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SplitSpace(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"criterion": "mse"}, "criterion must be one of"),
    ({"max_depth": 0}, "max_depth must be an integer >= 1"),
    ({"min_samples_split": 1}, "min_samples_split must be an integer >= 2"),
    ({"min_samples_leaf": 0}, "min_samples_leaf must be an integer >= 1"),
    ({"min_impurity_decrease": -0.1}, "min_impurity_decrease"),
    ({"ties": "random"}, "ties must be one of"),
    ({"feature_sampling": "node"}, "feature_sampling must be one of"),
    ({"max_features": 9}, "max_features must lie in"),
    ({"max_features": "half"}, "max_features must be None"),
    ({"n_estimators": 0}, "n_estimators must be an integer >= 1"),
])
def test_bad_forest_config_raises(kwargs, match):
    x, y = _product_data(SIG, 40, 0)
    with pytest.raises(ValueError, match=match):
        ProductSpaceRandomForest(SIG, n_estimators=kwargs.pop("n_estimators", 2), **kwargs).fit(x, y)


def test_points_off_the_product_or_of_the_wrong_width_raise():
    x, y = _product_data(SIG, 40, 0)
    with pytest.raises(ValueError, match="have 8 coordinates; got X with 7 columns"):
        ProductSpaceDecisionTree(SIG).fit(x[:, :7], y)
    bad = x.copy()
    bad[:, 0] += 1.0                                   # off the hyperboloid
    with pytest.raises(ValueError, match="hyperboloid"):
        ProductSpaceDecisionTree(SIG).fit(bad, y)


# ------------------------------------------------------------------ scikit-learn's common checks

@pytest.mark.slow
@pytest.mark.parametrize("estimator", [ProductSpaceDecisionTree(),
                                       ProductSpaceRandomForest(n_estimators=5, random_state=0)],
                         ids=["tree", "forest"])
def test_sklearn_check_estimator(estimator):
    """Every applicable common check passes with ``signature=None`` (every column a Euclidean factor).

    Not run: any check on a curved signature, because scikit-learn's checks feed arbitrary arrays, which
    are not points of a hyperboloid or sphere (fit rejects them by design); ``check_array_api_input``
    and ``check_classifier_data_not_an_array`` skip themselves here (SCIPY_ARRAY_API unset; no pandas).
    """
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert not failed
    assert skipped <= {"check_array_api_input", "check_classifier_data_not_an_array"}
    assert sum(r["status"] == "passed" for r in results) >= 50
