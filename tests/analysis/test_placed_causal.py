"""``ablate`` and ``steer`` on a model that is not resident: layer-streamed (``stream_layers``) or offloaded
by accelerate (``device_map``). Re-routing and steering rewrite the router's scores inside the forward, so
they must give what the in-memory model gives; zeroing a weight and gradient attribution cannot, and are
refused by name."""

import json

import numpy as np
import pytest
import torch
from test_ablate import CODE, PROSE
from typer.testing import CliRunner

from moescope.analysis.ablate import AblateConfig, run_ablation
from moescope.analysis.ablation import AblationConfig, ablate
from moescope.analysis.analyze import Source
from moescope.analysis.steer import SteerCommand, run_steer
from moescope.analysis.steering import SteerConfig
from moescope.analysis.window_loss import AblationError
from moescope.cli import app
from moescope.models.streaming import memory_plan, stream_moe_model

SOURCES = (Source("code", CODE, "code"), Source("prose", PROSE, "prose"))


def _ablate(path, **kw):
    return run_ablation(AblateConfig(path=path, sources=SOURCES, modes=("reroute",), exact="all", seq_len=8,
                                     max_windows=6, batch_size=3, draws=200, **kw))


@pytest.mark.parametrize("placement", ["stream", "offload"])
def test_reroute_ablation_of_a_model_that_is_not_resident_equals_in_memory(saved, tmp_path, placement):
    path = saved("mixtral")
    plain = _ablate(path)
    kw = ({"stream_layers": True} if placement == "stream" else
          {"device_map": "auto", "max_memory": memory_plan(path).whole // 2, "offload_folder": tmp_path / "o"})
    placed = _ablate(path, **kw)
    assert "memory" not in plain and placed["memory"]["streamed"] is (placement == "stream")
    for d in ("code", "prose"):
        got, want = placed["raw"]["delta"]["reroute"][d], plain["raw"]["delta"]["reroute"][d]
        np.testing.assert_allclose(np.array(got["per_window"], dtype=float), np.array(want["per_window"], dtype=float),
                                   rtol=1e-4, atol=1e-5)
        assert np.isfinite(np.array(got["mean"], dtype=float)).all()
    assert all(x is None for row in placed["raw"]["attribution"]["code"] for x in row)  # not computed, not faked
    json.dumps(placed, allow_nan=False)


def test_what_a_streamed_model_cannot_do_is_refused(saved):
    model, _, views = stream_moe_model(saved("mixtral"))
    ids = {"code": torch.randint(0, 50, (2, 6))}
    with pytest.raises(AblationError, match="zero mode edits an expert's resident down projection"):
        ablate(model, views, ids, AblationConfig(modes=("zero",)))
    with pytest.raises(AblationError, match="needs gradients of resident weights"):
        ablate(model, views, ids, AblationConfig(modes=("reroute",), exact_limit=1))


def test_steering_a_streamed_model_equals_in_memory(saved):
    path = saved("mixtral")
    cmd = {"path": path, "contrast": SOURCES, "seq_len": 8, "max_windows": 8,
           "steer": SteerConfig(top=2, random_draws=3, draws=200)}
    plain, streamed = run_steer(SteerCommand(**cmd)), run_steer(SteerCommand(**cmd, stream_layers=True))
    assert streamed["memory"]["streamed"] is True and plain["linked"] == streamed["linked"]
    for direction, per in plain["steering"].items():
        for name, r in per.items():
            s = streamed["steering"][direction][name]
            assert s["delta_loss"] == pytest.approx(r["delta_loss"], rel=1e-4, abs=1e-6)
            assert s["random"] == pytest.approx(r["random"], rel=1e-4, abs=1e-6)


def test_cli_ablate_streams_and_refuses_memory_options_on_lab_runs(saved, tmp_path):
    out = tmp_path / "out"
    code = tmp_path / "code.txt"
    code.write_text(CODE)
    prose = tmp_path / "prose.txt"
    prose.write_text(PROSE)
    result = CliRunner().invoke(app, ["ablate", str(saved("mixtral")), "--domain", f"code={code}", "--domain",
                                      f"prose={prose}", "--mode", "reroute", "--exact", "all", "--seq-len", "8",
                                      "--max-windows", "4", "--stream-layers", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "one decoder layer at a time" in " ".join(result.output.split())
    assert json.loads((out / "results.json").read_text())["memory"]["streamed"] is True
    assert "Decoder layers streamed from the safetensors shards" in (out / "report.html").read_text()
    bad = CliRunner().invoke(app, ["ablate", str(saved("mixtral")), "--stream-layers", "--device-map", "auto"])
    assert bad.exit_code == 2 and "choose one" in bad.output
