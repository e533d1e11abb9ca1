"""``moescope ablate``: the command's pipeline, its report, attribution against finite differences,
the exact-cell policy and bad input (the interventions' oracles are in ``test_ablation.py``)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from moescope.analysis.ablate import AblateConfig, run_ablation, sentence, windows
from moescope.analysis.ablation import AblationConfig, _exact_cells, ablate
from moescope.analysis.analyze import Source
from moescope.analysis.interventions import attribution, zero
from moescope.analysis.window_loss import window_losses
from moescope.cli import app
from moescope.models.adapters import find_moe_layers
from moescope.models.loading import load_moe_model

CODE = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)\n" * 12
PROSE = "The quick brown fox jumps over the lazy dog. Experts route every token to a few experts. " * 12


@pytest.fixture
def mixtral(saved) -> Path:
    return saved("mixtral")


def _ids(model, windows_: int = 6, length: int = 10, seed: int = 0) -> torch.Tensor:
    vocab = model.get_output_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (windows_, length), generator=torch.Generator().manual_seed(seed))


def test_attribution_is_the_derivative_of_the_loss_in_the_experts_output_scale(mixtral):
    """−∂L/∂α at α = 1, with expert e's down projection scaled by α, by central differences (float64)."""
    model, _, _ = load_moe_model(mixtral)
    model.config._experts_implementation = "eager"  # grouped_mm has no float64 kernel
    views = find_moe_layers(model.double())  # the views of the float64 parameters
    ids = _ids(model)
    attr = attribution(model, views, [0, 3], ids, batch_size=4)
    for li, view in enumerate(views):
        for ei, e in enumerate([0, 3]):
            down = view.expert(e).down
            keep = down.clone()
            losses = []
            for alpha in (1 + 1e-2, 1 - 1e-2):  # RMSNorm computes in float32: a wide step, O(1e-4) error
                with torch.no_grad():
                    down.copy_(alpha * keep)
                losses.append(float(window_losses(model, ids).mean()))
            with torch.no_grad():
                down.copy_(keep)
            derivative = (losses[0] - losses[1]) / 2e-2
            assert attr[li, ei] == pytest.approx(-derivative, rel=1e-2, abs=1e-5)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_exact_map_policy_and_cost(mixtral):
    model, _, views = load_moe_model(mixtral)
    doms = {"a": _ids(model, seed=1), "b": _ids(model, seed=2)}
    res = ablate(model, views, doms, AblationConfig(modes=("zero",), exact_limit=4, top=3, draws=200))
    # 2 layers × 8 experts = 16 cells > 4: the top 3 per domain by attribution, and nothing else
    expected = set()
    for a in res.attribution.values():
        expected |= {tuple(np.unravel_index(f, a.shape)) for f in np.argsort(-a, axis=None, kind="stable")[:3]}
    assert set(res.measured) == expected
    measured = np.zeros((2, 8), bool)
    for c in res.measured:
        measured[c] = True
    assert np.isfinite(res.mean("zero", "a")[measured]).all() and np.isnan(res.mean("zero", "a")[~measured]).all()
    # the residual cache: an ablation of decoder layer l costs (L − l)/L of a forward
    assert res.cost == pytest.approx(1 + sum((2 - views[li].index) / 2 for li, _ in res.measured))
    assert res.naive_cost == 1 + len(res.measured)
    every = _exact_cells({"a": np.zeros((2, 8))}, AblationConfig(exact="all", exact_limit=4))
    assert len(every) == 16


def test_zero_down_projection_gives_zero_change_and_zero_attribution(mixtral):
    model, _, views = load_moe_model(mixtral)
    with torch.no_grad():
        views[1].expert(5).down.zero_()
    res = ablate(model, views, {"a": _ids(model, windows_=12)},
                 AblationConfig(modes=("zero",), layers=(1,), experts=(5,), draws=200))
    assert (res.delta["zero"]["a"] == 0).all()
    assert res.attribution["a"][0, 0] == 0.0
    assert res.intervals["zero"]["a"][0, 0].tolist() == [0.0, 0.0]


def test_run_ablation_end_to_end_and_report(mixtral, tmp_path):
    cfg = AblateConfig(path=mixtral, sources=(Source("c", CODE, "code"), Source("p", PROSE, "prose")),
                       seq_len=12, max_windows=10, batch_size=5, draws=200)
    res = run_ablation(cfg)
    assert set(res["summary"]) == {"reroute", "zero"}
    assert res["text"]["code"]["windows"] == 10
    json.dumps(res, allow_nan=False)  # standard JSON: a cell not measured is null, never NaN
    top = res["summary"]["zero"]["top"]["code"][0]
    assert res["sentences"]["zero"]["code"].startswith(("Removing", "The largest"))
    assert f"{top['delta']:+.4f}" in res["sentences"]["zero"]["code"]  # the sentence shows the table's number
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ablate", str(mixtral), "--domain", f"code={_write(tmp_path, 'c', CODE)}",
                                      "--domain", f"prose={_write(tmp_path, 'p', PROSE)}", "--seq-len", "12",
                                      "--max-windows", "10", "--mode", "zero", "--layers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "MoE layer 1: loss change when each expert is removed (zero)" in html
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["modes"] == ["zero"] and [lay["layer"] for lay in saved["summary"]["zero"]["layers"]] == [1]


def _write(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.txt"
    path.write_text(text)
    return path


def test_sentence_says_inconclusive_when_the_interval_includes_zero():
    row = {"layer": 2, "expert": 7, "delta": 0.0123, "interval": [-0.001, 0.03]}
    s = sentence(row, 1, 64, "code", 0.95)
    assert "includes zero" in s and "+0.0123" in s and "1 of 64" in s and "1.6 by chance" in s
    s = sentence({**row, "interval": [0.004, 0.03]}, 3, 64, "code", 0.95)
    assert s.startswith("Removing expert 7 of MoE layer 2 raises the code loss most, by +0.0123 nats")
    assert "too few windows" in sentence({**row, "interval": None}, 0, 64, "code", 0.95)


def test_windows_are_spread_and_refuse_a_short_text():
    w = windows(list(range(100)), 10, 4)
    assert w.shape == (4, 10) and w[:, 0].tolist() == [0, 30, 60, 90]
    with pytest.raises(ValueError, match="fewer than one window of seq_len=10"):
        windows(list(range(5)), 10, 4)


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "shuffle"], "--mode must be reroute, zero or both; got 'shuffle'"),
    (["--exact", "some"], "exact must be one of auto, all; got 'some'"),
    (["--experts", "1,x"], "--experts expects comma-separated expert indices"),
    (["--seq-len", "1"], "seq-len"),
])
def test_bad_options_are_refused_before_any_work(mixtral, args, message):
    result = CliRunner().invoke(app, ["ablate", str(mixtral), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()).replace("│", "").replace("  ", " ") or message in result.output


def test_a_domain_window_with_ids_outside_the_vocabulary_is_named(mixtral):
    model, _, views = load_moe_model(mixtral)
    vocab = model.get_output_embeddings().weight.shape[0]
    bad = torch.full((2, 6), vocab + 3)
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {vocab}\)"):
        window_losses(model, bad)
    with zero(views[0], 1):
        pass
    assert not math.isnan(float(window_losses(model, _ids(model)).mean()))
