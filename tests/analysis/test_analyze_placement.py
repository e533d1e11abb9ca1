"""``analyze`` with the model placed by accelerate (``device_map``) or not built at all (``routing=False``)."""

import json
from pathlib import Path

import pytest
from test_analyze_streaming import _close, _config
from typer.testing import CliRunner

from moescope.analysis.analyze import AnalyzeConfig, analyze
from moescope.cli import app
from moescope.models.streaming import memory_plan


def _routing_only(results: dict) -> dict:
    """What routing measured, without the measurements that need resident weights."""
    return {k: results[k] for k in ("model", "text", "routing", "samples")}


@pytest.mark.parametrize("offload", [False, True])
def test_device_map_routing_equals_in_memory(saved, tmp_path, offload):
    path = saved("mixtral")
    plain = analyze(_config(path))
    kw = {"max_memory": memory_plan(path).whole // 2, "offload_folder": tmp_path / "offload"} if offload else {}
    placed = analyze(_config(path, device_map="auto", **kw))
    memory = placed.pop("memory")
    assert memory["device_map"] == "auto" and memory["streamed"] is False
    if offload:
        assert any((tmp_path / "offload").iterdir()), "nothing was offloaded to disk: the budget did not bite"
    assert "logit_lens" not in placed and "router_boundary" not in placed  # they read resident weights
    _close(_routing_only(plain), _routing_only(placed))


def test_weights_only_equals_the_weights_of_a_full_analysis(saved):
    path = saved("qwen2_moe")
    full = analyze(AnalyzeConfig(path=path, seq_len=16, batch_size=2, max_tokens=64, boundary_points=0))
    only = analyze(AnalyzeConfig(path=path, routing=False))
    assert only["routing"] == [] and only["samples"] == [] and "text" not in only
    assert only["model"]["num_experts"] == full["model"]["num_experts"]
    assert only["model"]["top_k"] == full["model"]["top_k"]
    for layer in full["weights"]["layers"] + only["weights"]["layers"]:
        layer.pop("seconds")
    _close(full["weights"], only["weights"])
    rate = only["weights_only"]
    assert rate["bytes"] > 0 and rate["seconds"] > 0
    assert rate["seconds_per_100GB"] == pytest.approx(100e9 * rate["seconds"] / rate["bytes"])
    json.dumps(only, allow_nan=False)


@pytest.mark.parametrize(("kw", "message"), [
    ({"routing": False, "weights": False}, "nothing to measure"),
    ({"device_map": "auto", "stream_layers": True}, "choose one"),
    ({"offload_folder": Path("x")}, "only applies with device_map"),
    ({"device_map": "everywhere"}, "device_map 'everywhere' is not a placement strategy"),
])
def test_bad_combinations_fail_before_any_work(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        AnalyzeConfig(path=tmp_path, **kw)


@pytest.mark.parametrize("flag", ["--stream-layers", "--device-map"])
def test_the_report_states_where_the_weights_were_and_the_peak(saved, tmp_path, flag):
    out = tmp_path / "out"
    args = [flag] if flag == "--stream-layers" else [flag, "auto"]
    result = CliRunner().invoke(app, ["analyze", str(saved("mixtral")), *args, "--no-weights", "--max-tokens", "64",
                                      "--seq-len", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = " ".join((out / "report.html").read_text().split())
    assert "Peak resident-memory growth over the process's baseline" in page
    assert ("layer-major" in page and "Streaming this checkpoint needs at least" in page) if flag == "--stream-layers" \
        else "Weights placed by accelerate" in page


def test_cli_weights_only_writes_a_report(saved, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(saved("mixtral")), "--no-routing", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "a 100 GB checkpoint would take" in " ".join(result.output.split())
    results = json.loads((out / "results.json").read_text())
    assert results["weights"]["layers"] and results["routing"] == []
    assert "Grassmann" in (out / "report.html").read_text()
