"""Routing across depth (moescope.analysis.pathways): planted paths, an independent null, and the real thing."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_analyze_streaming import TEXT

from moescope.analysis.analyze import AnalyzeConfig, Source, analyze
from moescope.analysis.pathways import Pathways


def _pathways(table: np.ndarray, experts: int) -> dict:
    p = Pathways([experts] * table.shape[1])
    p.add(table)
    return p.summary(draws=99)


def test_a_layer_that_copies_the_last_one_is_fully_dependent_and_predictable():
    rng = np.random.default_rng(0)
    first = rng.integers(0, 8, 2000)
    out = _pathways(np.stack([first, (first + 3) % 8, rng.integers(0, 8, 2000)], axis=1), 8)
    copy, independent = out["transitions"]
    assert copy["nmi"] == pytest.approx(1.0) and copy["interval"][0] > 0.9 and copy["p_value"] == 0.01
    assert copy["transition"][2] == [0.0] * 5 + [1.0] + [0.0] * 2  # expert 2 -> expert 5, always
    assert independent["interval"][0] <= 0 <= independent["interval"][1] or independent["p_value"] > 0.01
    assert out["prediction"][0]["accuracy"] == pytest.approx(0.5 * (1.0 + 1 / 8), abs=0.05)  # mean of l=0 (1.0), l=1
    assert out["prediction"][0]["constant_guess"] < 0.2


def test_transitions_and_paths_are_the_counts():
    rng = np.random.default_rng(1)
    table = rng.integers(0, 4, (500, 3))
    table[:200] = [1, 2, 3]  # a planted frequent path
    out = _pathways(table, 4)
    for pair in out["transitions"]:
        a, b = table[:, pair["from"]], table[:, pair["to"]]
        for i in range(4):
            expected = [float(np.mean(b[a == i] == j)) for j in range(4)]
            assert pair["transition"][i] == pytest.approx(expected)
    top = out["paths"][0]
    loads = [np.bincount(table[:, layer], minlength=4) / 500 for layer in range(3)]
    assert top["experts"] == [1, 2, 3] and top["count"] == int((table == [1, 2, 3]).all(1).sum())
    assert top["independent_share"] == pytest.approx(loads[0][1] * loads[1][2] * loads[2][3])


def test_the_null_is_not_always_significant_when_layers_are_independent():
    """Exchangeable choices: the permutation p-value is roughly uniform over seeds, the interval covers 0."""
    pvalues, covered = [], 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out = _pathways(rng.integers(0, 6, (400, 2)), 6)
        pair = out["transitions"][0]
        pvalues.append(pair["p_value"])
        covered += pair["interval"][0] <= 0 <= pair["interval"][1]
    assert np.mean(np.array(pvalues) < 0.05) <= 0.2 and covered >= 16


def test_dropped_tokens_are_left_out_and_bad_input_is_refused():
    out = _pathways(np.array([[0, -1], [1, 1], [0, 0], [1, 1]]), 2)
    assert out["transitions"][0]["tokens"] == 3
    with pytest.raises(ValueError, match=r"expected \(tokens, 2\)"):
        Pathways([2, 2]).add(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="draws=10 cannot give a 95.0% permutation interval"):
        Pathways([2, 2]).summary(draws=10)
    with pytest.raises(ValueError, match="draws be >= 199"):     # a 99% interval needs more draws: no (-inf, inf)
        Pathways([2, 2]).summary(draws=39, level=0.99)


def test_a_mirrored_table_counts_as_extreme_as_the_observed_one():
    """A balanced 2 x 2 table and its mirror have the same mutual information (one ulp apart in floating
    point): the permutation p-value counts both, and matches the exact one, the two-sided hypergeometric
    tail (an independent reviewer's planted case: 0.037 before, counting only one of the two)."""
    from scipy.stats import hypergeom

    m, x = 28, 10
    table = np.array([(0, 0)] * x + [(0, 1)] * (m - x) + [(1, 0)] * (m - x) + [(1, 1)] * x)
    p = Pathways([2, 2])
    p.add(table)
    got = p.summary(draws=9999)["transitions"][0]["p_value"]
    law = hypergeom(2 * m, m, m)          # (0, 0) pairs under shuffling, both margins m: symmetric about m / 2
    exact = 2 * law.cdf(x)                 # P(X <= 10) + P(X >= 18): as far from 14 as the table, either way
    assert got == pytest.approx(exact, abs=0.01)


def test_analyze_reports_pathways_that_match_its_token_trace(saved, tmp_path):
    cfg = AnalyzeConfig(path=saved("qwen2_moe"), sources=(Source("a", TEXT, "code"),), seq_len=16, batch_size=3,
                        weights=False, boundary_points=0, trace=tmp_path / "t.parquet")
    out = analyze(cfg)["pathways"]
    trace = pq.read_table(tmp_path / "t.parquet").to_pydict()
    layers = sorted(int(c[1:].split(".")[0]) for c in trace if c.endswith(".experts"))
    assert out["tokens"] == len(trace["token_id"]) and len(out["transitions"]) == len(layers) - 1
    first = np.array([[row[0] for row in trace[f"L{layer}.experts"]] for layer in layers]).T
    pair = out["transitions"][0]
    for i, row in enumerate(pair["transition"]):
        chosen = first[first[:, 0] == i, 1]
        if row is None:
            assert chosen.size == 0
        else:
            assert row == pytest.approx(np.bincount(chosen, minlength=len(row)) / chosen.size)


def test_the_vectorised_shuffles_are_permutations_counted_like_a_loop():
    """Every shuffled joint keeps both marginals (a permutation of layer l+1's choices, nothing else), the
    draws differ, chunking changes nothing, and its null NMI matches a loop of rng.permutation's."""
    from moescope.analysis.pathways import _joint, _shuffled_joints
    from moescope.stats import normalized_mutual_information

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 7, 300)
    joints = _shuffled_joints(a, b, 5, 7, 200, np.random.default_rng(1))
    assert joints.shape == (200, 5, 7)
    np.testing.assert_array_equal(joints.sum(2), np.broadcast_to(np.bincount(a, minlength=5), (200, 5)))
    np.testing.assert_array_equal(joints.sum(1), np.broadcast_to(np.bincount(b, minlength=7), (200, 7)))
    assert len({j.tobytes() for j in joints}) > 190
    chunked = _shuffled_joints(a, b, 5, 7, 200, np.random.default_rng(1), chunk_values=900)   # 3 draws a chunk
    np.testing.assert_array_equal(chunked, joints)
    loop = [normalized_mutual_information(_joint(a, np.random.default_rng(s).permutation(b), 5, 7)) for s in range(200)]
    ours = [normalized_mutual_information(j) for j in joints]
    assert abs(np.mean(ours) - np.mean(loop)) < 3 * np.std(loop) / np.sqrt(200) * np.sqrt(2)


@pytest.mark.parametrize("size", [2000, 20_000])
def test_the_hypergeometric_tables_are_the_shuffle_null(size):
    """With many tokens per cell the null tables are drawn directly (multivariate hypergeometric, both margins
    fixed); each cell's mean and variance are the hypergeometric's, r_i·c_j/N and r_i·c_j·(N−r_i)(N−c_j) /
    (N²(N−1)), and its NMI null matches a loop of shuffles."""
    from moescope.analysis.pathways import _joint, _shuffled_joints
    from moescope.stats import normalized_mutual_information

    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 4, size), rng.choice(6, size, p=[0.4, 0.3, 0.1, 0.1, 0.05, 0.05])
    joints = _shuffled_joints(a, b, 4, 6, 4000, np.random.default_rng(2))
    r, c, n = np.bincount(a, minlength=4)[:, None], np.bincount(b, minlength=6)[None, :], size
    np.testing.assert_array_equal(joints.sum(2), np.broadcast_to(r[:, 0], (4000, 4)))
    np.testing.assert_array_equal(joints.sum(1), np.broadcast_to(c[0], (4000, 6)))
    mean, var = r * c / n, r * c * (n - r) * (n - c) / (n**2 * (n - 1))
    assert np.all(np.abs(joints.mean(0) - mean) < 5 * np.sqrt(var / 4000))
    np.testing.assert_allclose(joints.var(0), var, rtol=0.15)
    loop = [normalized_mutual_information(_joint(a, np.random.default_rng(s).permutation(b), 4, 6)) for s in range(400)]
    ours = [normalized_mutual_information(j) for j in joints[:400]]
    assert abs(np.mean(ours) - np.mean(loop)) < 4 * np.std(loop) / np.sqrt(200)
