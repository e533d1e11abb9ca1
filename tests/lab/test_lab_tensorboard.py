"""TensorBoard curves mirror the JSONL metrics log, survive a resume without duplicates, and a
missing package is a clear error before any work."""

import math

import pytest
from lab_fixtures import tiny_spec, tiny_tokens
from typer.testing import CliRunner

from moescope.cli import app
from moescope.lab import checkpoint as ckpt
from moescope.lab import tensorboard as tb
from moescope.lab.run import LabConfig
from moescope.lab.train import LOG_FILE, train_run

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


class Interrupt(Exception):
    pass


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / tb.TENSORBOARD_DIR))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _close(a: float, b: float) -> bool:  # events hold float32
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def test_curves_equal_the_metrics_log_and_the_result(tmp_path):
    spec = tiny_spec("deepseek_v3")
    result = train_run(spec, tiny_tokens(), tmp_path, progress=False, tensorboard=True)
    records = ckpt.read_log(tmp_path / spec.name / LOG_FILE)
    curves = _scalars(tmp_path / spec.name)
    assert [s for s, _ in curves["train/loss"]] == [r["step"] for r in records] == list(range(1, 13))
    for key in ("loss", "total_loss", "lr", "grad_norm"):
        assert all(_close(v, r[key]) for (_, v), r in zip(curves[f"train/{key}"], records, strict=True)), key
    for name in records[0]["aux"]:
        assert all(_close(v, r["aux"][name]) for (_, v), r in zip(curves[f"aux/{name}"], records, strict=True))
    assert len(curves["load_cv/layer1"]) == 12
    for domain, value in result.val_loss_by_domain.items():
        assert curves[f"val_loss/{domain}"] == [(12, pytest.approx(value, rel=1e-6))]


def test_a_resumed_run_has_one_point_per_step(tmp_path):
    spec = tiny_spec("topk")

    def stop(step, record):
        if step == 10:             # after the checkpoint at step 8: steps 9 and 10 are trained again
            raise Interrupt

    with pytest.raises(Interrupt):
        train_run(spec, tiny_tokens(), tmp_path, progress=False, on_step=stop, tensorboard=True)
    train_run(spec, tiny_tokens(), tmp_path, progress=False, tensorboard=True)
    records = ckpt.read_log(tmp_path / spec.name / LOG_FILE)
    curve = _scalars(tmp_path / spec.name)["train/loss"]
    assert [s for s, _ in curve] == list(range(1, 13))
    assert all(_close(v, r["loss"]) for (_, v), r in zip(curve, records, strict=True))


def test_without_the_flag_no_events_are_written(tmp_path):
    spec = tiny_spec("topk", steps=3, warmup_steps=1, checkpoint_every=3)
    train_run(spec, tiny_tokens(), tmp_path, progress=False)
    assert not (tmp_path / spec.name / tb.TENSORBOARD_DIR).exists()


def test_missing_package_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(tb, "available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'moescope\[tensorboard\]'"):
        LabConfig(claims=(8,), tensorboard=True)
    with pytest.raises(ValueError, match="tensorboard package"):
        train_run(tiny_spec("topk"), tiny_tokens(), tmp_path, progress=False, tensorboard=True)
    assert not any(tmp_path.iterdir())
    for command in (["lab", "--claims", "8"], ["train", "--runs", "top2"]):
        result = CliRunner().invoke(app, [*command, "--tensorboard", "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and "moescope[tensorboard]" in result.output, result.output
    assert not (tmp_path / "out").exists()
