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
    with pytest.raises(ValueError, match="draws must be >= 39"):
        Pathways([2, 2]).summary(draws=10)


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
