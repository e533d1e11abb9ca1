"""moescope analyze / compare end to end on tiny checkpoints of every family, from disk."""

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import tiny_checkpoints

from moescope.analysis.analyze import AnalyzeConfig, Source, analyze
from moescope.cli import app

runner = CliRunner()
TEXT = "def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. 12 + 30 = 42.\n" * 8


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    cache = {}

    def get(family: str, seed: int = 0) -> Path:
        key = (family, seed)
        if key not in cache:
            cache[key] = tiny_checkpoints.save(family, root / f"{family}-{seed}", seed=seed)
        return cache[key]

    return get


def _text(output: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.mark.parametrize("family", sorted(tiny_checkpoints.BUILDERS))
def test_every_family_from_disk(family, saved):
    cfg = AnalyzeConfig(path=saved(family), sources=(Source("a", TEXT, "code"), Source("b", TEXT[::-1], "prose")),
                        seq_len=16, batch_size=3, weights=False, activity_draws=0)
    res = analyze(cfg)
    json.dumps(res, allow_nan=False)
    for layer in res["expert_activity"]["layers"]:  # each expert's output, summed with the weights, is the block's
        assert layer["identity_error"] is None or layer["identity_error"] < 1e-4, (layer["name"], layer["reason"])
    assert res["model"]["model_type"] == json.loads((saved(family) / "config.json").read_text())["model_type"]
    assert res["text"]["tokens"] == sum(res["text"]["per_source"].values())
    for layer in res["routing"]:
        assert layer["tokens"] == res["text"]["tokens"]  # padding of the last sequence excluded
        total = sum(layer["load"])
        if family == "switch_transformers":  # capacity drops make the used share < 1
            assert 0 < total <= 1 + 1e-9
        else:
            assert total == pytest.approx(1.0)
        assert layer["domains"]["names"] == ["code", "prose"]
    assert {s["name"] for s in res["samples"]} == {"a", "b"}
    for sample in res["samples"]:  # the coloured text and the heatmap show the same routing
        assert len(sample["tokens"]) == sample["heatmap_tokens"] == 48   # the heatmap's 48 > --seq-len 16
        for layer, text in sample["text"].items():
            assert len(text["experts"]) == 48
            dense = sample["weights"][layer]
            for i, (experts, weights) in enumerate(zip(text["experts"], text["weights"], strict=True)):
                for e, w in zip(experts, weights, strict=True):
                    assert e < 0 or dense[i][e] == pytest.approx(w, abs=1e-4)
    if family != "switch_transformers" and "skipped" not in res["ablation"]:  # re-route map on the same text
        assert set(res["ablation"]["base_loss"]) == {"code", "prose"}
        assert res["ablation"]["config"]["modes"] == ["reroute"]
    for layer in res["routing"]:  # vocabulary specialisation, decoded
        vocab = layer["tokens_specialisation"]["vocabulary"]
        assert all(isinstance(row["token"], str) for rows in vocab["experts"] for row in rows)


def test_cli_writes_an_offline_report(saved, tmp_path):
    code, prose = tmp_path / "code.py", tmp_path / "prose.txt"
    code.write_text(TEXT)
    prose.write_text("It was a bright cold day in April, and the clocks were striking thirteen. " * 10)
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(saved("mixtral")), "--domain", f"code={code}",
                                 "--domain", f"prose={prose}", "--layers", "1", "--seq-len", "32",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert [r["layer"] for r in data["routing"]] == [1]
    assert "weights" in data
    html = (out / "report.html").read_text()
    assert "<script src=" not in html and html.count("Plotly.newPlot") >= 4


@pytest.mark.parametrize(("args", "needle"), [
    (["/no/such/checkpoint"], "/no/such/checkpoint"),
    (["{mixtral}", "--layers", "7"], "--layers [7] not found"),
    (["{mixtral}", "--domain", "code"], "NAME=FILE"),
    (["{mixtral}", "--text", "/no/such.txt"], "no such file"),
])
def test_cli_errors(args, needle, saved):
    args = [a.format(mixtral=saved("mixtral")) for a in args]
    result = runner.invoke(app, ["analyze", *args, "--no-weights"])
    assert result.exit_code != 0
    assert needle in _text(result.output)


def test_empty_text_is_refused(saved, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    result = runner.invoke(app, ["analyze", str(saved("mixtral")), "--text", str(empty), "--no-weights"])
    assert result.exit_code != 0 and "is empty" in _text(result.output)


def test_compare_is_the_two_checkpoint_series(saved, tmp_path):
    ckpt = str(saved("qwen3_moe"))
    same = runner.invoke(app, ["compare", ckpt, ckpt, "--out", str(tmp_path / "s"), "--max-tokens", "300"])
    assert same.exit_code == 0, same.output
    data = json.loads((tmp_path / "s" / "results.json").read_text())
    first = data["series"][0]
    assert first["saturation"] == [1.0] * len(first["saturation"])   # a checkpoint agrees with itself
    assert all(c == pytest.approx(1.0) for d in first["drift"] for c in d["router_row_cosine"])
    assert all(c == 0.0 for d in first["drift"] for c in d["expert_relative_change"])
    assert (tmp_path / "s" / "report.html").stat().st_size > 10_000
    other = runner.invoke(app, ["compare", str(saved("qwen3_moe")), str(saved("qwen3_moe", seed=5)),
                                "--out", str(tmp_path / "o"), "--max-tokens", "300"])
    assert other.exit_code == 0, other.output
    sat = json.loads((tmp_path / "o" / "results.json").read_text())["series"][0]["saturation"]
    assert all(0.0 <= s < 1.0 for s in sat)
    assert "saturation" in _text(other.output) and "Report:" in other.output


def _sharded_worker(rank, world, port, path, out, stream=False):
    import os

    import torch
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world)})
    try:
        res = analyze(AnalyzeConfig(path=Path(path), sources=(Source("a", TEXT * 3, "code"),), seq_len=16,
                                    batch_size=2, weights=False, stream_layers=stream))
        if rank == 0:
            torch.save(res, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("stream", [False, True])
def test_sharded_analysis_equals_one_process(saved, tmp_path, stream):
    """torchrun-style: 2 gloo ranks split the batches (each rank layer-major over its own when streamed); the
    all-reduced statistics equal one process."""
    import socket

    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = saved("olmoe")
    mp.spawn(_sharded_worker, args=(2, port, str(path), str(tmp_path / "r0.pt"), stream), nprocs=2, join=True)
    sharded = torch.load(tmp_path / "r0.pt", weights_only=False)
    single = analyze(AnalyzeConfig(path=path, sources=(Source("a", TEXT * 3, "code"),), seq_len=16, batch_size=2,
                                   weights=False))
    for a, b in zip(sharded["routing"], single["routing"], strict=True):
        for key in ("tokens", "coactivation", "repetition", "dead_experts"):
            assert a[key] == b[key]
        assert a["mean_score"] == pytest.approx(b["mean_score"], rel=1e-12)
        assert a["balance_loss"] == pytest.approx(b["balance_loss"], rel=1e-12)
