"""Checkpoint series: ordering, refusal of mixed architectures, saturation against brute force, planted drift
and similarity, claim 7's rule on planted nulls, the CLI and its report."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import tiny_checkpoints

from moescope.analysis.analyze import Source
from moescope.analysis.series import SeriesConfig, _similarity_change, checkpoint_series, order_checkpoints
from moescope.cli import app

TEXT = "def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. 12 + 30 = 42.\n" * 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """checkpoint-100 and checkpoint-20 are independent inits; checkpoint-300 is checkpoint-100 with expert 1 of
    every layer moved by a known relative amount (so 100 → 300 drifts only there)."""
    root = tmp_path_factory.mktemp("run")
    tiny_checkpoints.save("mixtral", root / "checkpoint-20", seed=1)
    tiny_checkpoints.save("mixtral", root / "checkpoint-100", seed=0)
    shutil.copytree(root / "checkpoint-100", root / "checkpoint-300")
    f = root / "checkpoint-300" / "model.safetensors"
    tensors = load_file(f)
    moved = 0
    for key, t in tensors.items():     # expert 1's gate and up rows (what drift reads), ×1.5
        if ".experts.1.w1." in key or ".experts.1.w3." in key:
            t *= 1.5
            moved += 1
    save_file(tensors, f, metadata={"format": "pt"})
    assert moved
    (root / "notes").mkdir()
    return root


def test_order_and_refusals(run, tmp_path):
    order = order_checkpoints([run])
    assert [(label, step) for label, step, _ in order] == [("checkpoint-20", 20), ("checkpoint-100", 100),
                                                         ("checkpoint-300", 300)]
    given = order_checkpoints([run / "checkpoint-300", run / "checkpoint-20"])      # as given
    assert [s for _, s, _ in given] == [300, 20]
    with pytest.raises(ValueError, match="at least two"):
        order_checkpoints([run / "checkpoint-20"])
    with pytest.raises(ValueError, match="no config.json"):
        order_checkpoints([run / "checkpoint-20", run / "notes"])
    other = tiny_checkpoints.save("qwen3_moe", tmp_path / "q", seed=0)
    with pytest.raises(ValueError, match="not checkpoints of one architecture"):
        order_checkpoints([run / "checkpoint-20", other])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds 0 checkpoint folders"):
        order_checkpoints([tmp_path / "empty"])


def test_series_numbers(run):
    res = checkpoint_series(SeriesConfig(paths=(run,), sources=(Source("code", TEXT, "code"),
                                                                 Source("prose", TEXT[::-1], "prose")),
                                         seq_len=32, max_tokens=400, draws=40))
    json.dumps(res, allow_nan=False)
    last, mid, first = res["series"][-1], res["series"][1], res["series"][0]
    assert last["saturation"] == [1.0] * len(res["layers"])
    assert all(c == 0.0 for d in last["drift"] for c in d["expert_relative_change"])
    for d in mid["drift"]:                         # only expert 1 moved, by 1/3 of the moved rows' norm (×1.5)
        change = np.asarray(d["expert_relative_change"])
        assert change[1] == pytest.approx(1 / 3, rel=1e-5) and np.all(np.delete(change, 1) == 0)
        assert d["router_row_cosine"] == pytest.approx([1.0] * len(change))
    for sat, chance in zip(first["saturation"], first["chance_saturation"], strict=True):
        assert 0 <= sat < 1 and 0 < chance < 1     # an independent init keeps about what chance keeps
    assert {s["rank"] for s in first["similarity"]} == {s["rank"] for s in last["similarity"]}  # one rank per layer
    assert res["similarity_change"]["verdict"] in {"supported", "not supported", "inconclusive"}


def test_claim7_rule_on_planted_nulls():
    flat = [{"observed": 1.0, "null": [1.0] * 50, "ratio": 1.0}]
    fell = [{"observed": 0.8, "null": list(np.linspace(0.99, 1.01, 50)), "ratio": 0.8}]
    rose = [{"observed": 1.2, "null": list(np.linspace(0.99, 1.01, 50)), "ratio": 1.2}]
    assert _similarity_change(flat, fell)["verdict"] == "supported"
    assert _similarity_change(flat, rose)["verdict"] == "not supported"
    noisy = [{"observed": 1.0, "null": list(np.linspace(0.9, 1.1, 50)), "ratio": 1.0}]
    assert _similarity_change(flat, noisy)["verdict"] == "inconclusive"


def test_cli_series_and_bad_options(run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    got = runner.invoke(app, ["analyze", str(run / "checkpoint-20"), str(run / "checkpoint-300"), "--seq-len", "32",
                              "--max-tokens", "200", "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert "checkpoint-20: saturation" in got.output and "Expert similarity" in got.output
    html = (out / "report.html").read_text()
    assert "Router saturation" in html and html.count("Plotly.newPlot") >= 6 and "<script src=" not in html
    bad = runner.invoke(app, ["analyze", str(run), "--trace", str(tmp_path / "t.parquet")])
    assert bad.exit_code != 0 and "not to a series" in " ".join(re.sub(r"[│╭╮╰╯─]", " ", bad.output).split())
