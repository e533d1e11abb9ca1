"""Gu et al.'s discrete curvature: hand-derived values, signs for line, tree and cycle, signatures."""

import networkx as nx
import numpy as np
import pytest

from moescope.geometry.curved import curvature_estimates, standard_graph, suggest_signature


def test_line_is_flat():
    est = curvature_estimates(nx.path_graph(12))
    assert np.all(est["xi"] == 0.0) and est["frac_flat"] == 1.0


def test_cycle_by_hand():
    """40-cycle: only the antipode a of m contributes, (20² + 2²/4 − 19²)/(2·20) = 1, so ξ = 1/39."""
    est = curvature_estimates(nx.cycle_graph(40))
    np.testing.assert_allclose(est["xi"], 1 / 39, rtol=1e-14)
    assert est["angles_total"] == 40 and est["frac_positive"] == 1.0


def test_star_by_hand():
    """3-leaf star, angle (m; b, c): a = b or c gives (1 + 1 − 2)/2 = 0, the third leaf (1 + 1 − 4)/2 = −1."""
    est = curvature_estimates(nx.star_graph(3))
    np.testing.assert_allclose(est["xi"], -1 / 3, rtol=1e-14)
    assert est["angles_total"] == 3


def test_tree_is_negative():
    est = curvature_estimates(nx.balanced_tree(3, 3))
    assert est["frac_negative"] == 1.0 and est["mean"] < 0


@pytest.mark.parametrize(("name", "signature"), [("cycle", "S3"), ("tree", "H3"), ("ring-of-trees", "H2xS1")])
def test_suggested_signature_matches_gu_et_al(name, signature):
    assert suggest_signature(curvature_estimates(standard_graph(name)), 3)["signature"] == signature


def test_suggestion_rules_by_hand():
    est = {"frac_negative": 0.0, "frac_positive": 0.0}
    assert suggest_signature(est, 4)["signature"] == "E4"
    assert suggest_signature({"frac_negative": 0.3, "frac_positive": 0.6}, 3)["signature"] == "H1xS2"
    assert suggest_signature({"frac_negative": 0.97, "frac_positive": 0.03}, 3)["signature"] == "H3"
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        suggest_signature(est, 0)


def test_sampling_is_seeded():
    g = nx.grid_2d_graph(12, 12)
    a = curvature_estimates(g, max_angles=100, seed=3)
    b = curvature_estimates(g, max_angles=100, seed=3)
    assert a["angles_used"] == 100 < a["angles_total"]
    np.testing.assert_array_equal(a["xi"], b["xi"])


def test_bad_graphs():
    with pytest.raises(ValueError, match="at least 3 nodes"):
        curvature_estimates(nx.path_graph(2))
    with pytest.raises(ValueError, match="must be connected"):
        curvature_estimates(nx.Graph([(0, 1), (1, 2), (3, 4)]))
    with pytest.raises(TypeError, match="undirected networkx.Graph"):
        curvature_estimates(nx.DiGraph([(0, 1), (1, 2)]))
