"""Sarkar's construction: τ by hand, 1 + ε in exact arithmetic, and where float32 / float64 give out."""

import math

import networkx as nx
import pytest
import torch

from moescope.geometry.curved import MAX_DIST0, poincare, precision_sweep, sarkar_embedding, sarkar_tau
from moescope.geometry.curved.sarkar import bits_rule, mp_worst_case_distortion


def test_tau_by_hand():
    # deg 3: ν = −2 ln tan(π/6) = ln 3; ε = 1 doubles it
    assert sarkar_tau(3, 1.0) == pytest.approx(2 * math.log(3.0), rel=1e-15)
    # deg 4: tan(π/8) = √2 − 1; ε = 0.1 multiplies by 11
    assert sarkar_tau(4, 0.1) == pytest.approx(11 * -2 * math.log(math.sqrt(2) - 1), rel=1e-15)
    assert sarkar_tau(2, 0.1) == 1.0 and sarkar_tau(1, 0.5) == 1.0      # paths: no corner to cut
    assert bits_rule(2.0, 3) == pytest.approx(12 / math.log(2))


def test_layout_root_at_origin_children_at_tau():
    tree = nx.balanced_tree(3, 2)
    emb = sarkar_embedding(tree, eps=0.5, root=0)
    x = emb.to_tensor()
    idx = {v: k for k, v in enumerate(emb.nodes)}
    assert torch.equal(x[idx[0]], torch.zeros(2, dtype=torch.float64))
    for child in tree.neighbors(0):
        assert poincare.dist0(x[idx[child]]).item() == pytest.approx(emb.tau, rel=1e-12)
    for a, b in tree.edges():                                             # every edge has length τ
        assert poincare.dist(x[idx[a]], x[idx[b]]).item() == pytest.approx(emb.tau, rel=1e-10)


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0])
@pytest.mark.parametrize(("branching", "depth"), [(2, 3), (3, 2), (5, 2)])
def test_worst_case_within_one_plus_eps_in_exact_arithmetic(branching, depth, eps):
    tree = nx.balanced_tree(branching, depth)
    emb = sarkar_embedding(tree, eps=eps)
    assert 1.0 <= mp_worst_case_distortion(emb, tree) <= 1.0 + eps


def test_unbalanced_tree_and_default_root():
    tree = nx.random_labeled_tree(30, seed=4)
    emb = sarkar_embedding(tree, eps=0.5)
    assert emb.root in nx.center(tree)
    assert mp_worst_case_distortion(emb, tree) <= 1.5


def test_where_float32_and_float64_break_down():
    """Pinned measurements on binary trees, ε = 0.25 (τ = 5.49).

    float32 holds 1 + ε to depth 3 (radius 16.5) and float64 to depth 7 (radius 38.5); one
    level deeper their points round onto the unit circle. That is about τ·depth/ln 2 ≈ 24 and
    55 bits, close to the 24 and 53 the formats carry. The rule 2τ·depth/ln 2 says 48 and 111
    bits: in this centred construction with exact-gap distances it is conservative by 2×.
    """
    sweep = precision_sweep(branching=2, max_depth=8, eps=0.25)
    assert sweep["tau"] == pytest.approx(5.0 * math.log(3.0), rel=1e-12)
    assert sweep["last_ok"] == {"float32": 3, "float64": 7}
    rows = {r["depth"]: r for r in sweep["rows"]}
    for r in sweep["rows"]:
        if r["exact"] is not None:
            assert r["exact"] <= 1.25                                    # exact arithmetic always holds
    assert rows[4]["float32"]["worst"] is None and "unit circle" in rows[4]["float32"]["reason"]
    assert rows[8]["float64"]["worst"] is None
    for name, p in (("float32", 24), ("float64", 53)):
        k = sweep["last_ok"][name]
        assert abs(rows[k]["bits_radius"] - p) < 4                       # τ·depth/ln 2 ≈ the format's bits
        assert rows[k]["bits_rule"] > 1.8 * p                           # the 2τ·depth/ln 2 rule is conservative
    assert rows[3]["radius"] < MAX_DIST0[torch.float32] < rows[4]["radius"]


def test_bad_input():
    with pytest.raises(ValueError, match="undirected networkx tree"):
        sarkar_embedding(nx.cycle_graph(5))
    with pytest.raises(ValueError, match="root must be a node"):
        sarkar_embedding(nx.path_graph(4), root=17)
    with pytest.raises(ValueError, match="eps .* must be a positive finite number; got eps=0"):
        sarkar_tau(3, 0)
    with pytest.raises(ValueError, match="max_degree must be an integer >= 1"):
        sarkar_tau(0, 0.1)
