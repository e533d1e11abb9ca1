"""The command line end to end, in a temporary folder (typer's CliRunner)."""

import json
import re

import pytest
from typer.testing import CliRunner

from moescope.cli import app

runner = CliRunner()


def _text(output: str) -> str:
    """Output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_help_lists_commands_and_options():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "sphere" in result.output
    result = runner.invoke(app, ["sphere", "--help"])
    assert result.exit_code == 0
    for option in ("--dims", "--samples", "--points", "--seed", "--out"):
        assert option in result.output


def test_sphere_writes_report(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["sphere", "--dims", "2,10,100", "--samples", "400", "--points", "9",
                                 "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file()
    data = json.loads((out / "results.json").read_text())
    assert [r["d"] for r in data["per_dim"]] == [2, 10, 100]
    assert data["config"]["seed"] == 1
    assert {p.name for p in out.glob("*.png")} == {
        "equator_band.png", "cosine_histograms.png", "distance_contrast.png", "shell_mass.png"}


def test_bad_dims_are_a_clear_usage_error(tmp_path):
    for dims, needle in (("2,x", "comma-separated integers"), ("1,5", ">= 2")):
        result = runner.invoke(app, ["sphere", "--dims", dims, "--out", str(tmp_path)])
        assert result.exit_code == 2
        assert needle in _text(result.output)
    result = runner.invoke(app, ["sphere", "--samples", "10", "--points", "9", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "got samples=10" in _text(result.output)


def test_attack_help_and_bad_budget(tmp_path):
    result = runner.invoke(app, ["attack", "--help"])
    assert result.exit_code == 0 and "--dataset" in result.output
    result = runner.invoke(app, ["attack", "--eps", "0,abc", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "0,abc" in _text(result.output)
    result = runner.invoke(app, ["attack", "--dataset", "mnist", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "mnist" in _text(result.output)


def test_bench_analyze_help():
    result = runner.invoke(app, ["bench", "analyze", "--help"])
    assert result.exit_code == 0 and "--geometry" in _text(result.output)


# Every command checks its paths while parsing: a bad --out is refused before any work starts.
# Each row: the command line without --out, and the function doing the command's work, which must not run.
WORK = {
    "sphere": (["sphere"], "moescope.lab.sphere_laws.run_sphere"),
    "analyze": (["analyze", "{ckpt}"], "moescope.analysis.analyze.analyze"),
    "compare": (["compare", "{ckpt}", "{ckpt}"], "moescope.analysis.series.checkpoint_series"),
    "attack": (["attack"], "moescope.adversarial.experiment.run_experiment"),
    "curvature": (["curvature"], "moescope.lab.curvature.run_curvature"),
    "lab": (["lab"], "moescope.lab.run.run_lab"),
    "train": (["train"], "moescope.lab.runs.train_lab_runs"),
    "bench moe": (["bench", "moe"], "moescope.moe.benchmark.bench_moe"),
    "bench train": (["bench", "train"], "moescope.lab.bench_train.bench_train"),
    "bench parallel": (["bench", "parallel"], "moescope.moe.bench_parallel.bench_parallel"),
}


def _forbid_work(monkeypatch, target: str) -> None:
    def work(*args, **kwargs):
        raise AssertionError(f"{target} ran although the command line was refused")

    monkeypatch.setattr(target, work)


def _args(command: str, tmp_path) -> list[str]:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    return [a.format(ckpt=ckpt) for a in WORK[command][0]]


@pytest.mark.parametrize("command", list(WORK))
def test_out_of_the_wrong_kind_is_refused_before_any_work(command, tmp_path, monkeypatch):
    _forbid_work(monkeypatch, WORK[command][1])
    writes_a_file = command.startswith("bench ")  # bench --out is one JSON file; the others write a folder
    wrong = tmp_path / "taken"
    if writes_a_file:
        wrong.mkdir()
    else:
        wrong.write_text("not a folder")
    result = runner.invoke(app, [*_args(command, tmp_path), "--out", str(wrong)])
    assert result.exit_code == 2, result.output
    text = _text(result.output)
    assert "Invalid value for '--out'" in text and "Traceback" not in text
    assert ("is a folder; give a file name" if writes_a_file else "exists and is not a folder") in text
    assert wrong.is_dir() if writes_a_file else wrong.read_text() == "not a folder"


@pytest.mark.parametrize("command", [c for c in WORK if not c.startswith("bench ")])
def test_out_below_a_file_or_unwritable_is_refused(command, tmp_path, monkeypatch):
    _forbid_work(monkeypatch, WORK[command][1])
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, [*_args(command, tmp_path), "--out", str(tmp_path / "file" / "report")])
    assert result.exit_code == 2 and "is a file, so no folder can be made under it" in _text(result.output)
    monkeypatch.setattr("moescope._paths._writable", lambda folder: False)
    result = runner.invoke(app, [*_args(command, tmp_path), "--out", str(tmp_path / "new" / "report")])
    assert result.exit_code == 2 and "permission denied" in _text(result.output)


def test_input_paths_are_checked_before_any_work(tmp_path, monkeypatch):
    _forbid_work(monkeypatch, "moescope.analysis.analyze.analyze")
    _forbid_work(monkeypatch, "moescope.analysis.series.checkpoint_series")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    text = tmp_path / "a.txt"
    text.write_text("some text")
    out = ["--out", str(tmp_path / "out")]
    cases = (
        (["analyze", str(tmp_path / "nowhere"), *out], "'PATH'", "does not exist"),
        (["analyze", str(text), *out], "'PATH'", "is not a folder"),
        (["analyze", str(ckpt), "--text", str(tmp_path / "missing.txt"), *out], "'--text'", "no such file"),
        (["analyze", str(ckpt), "--text", str(ckpt), *out], "'--text'", "is not a file"),
        (["analyze", str(ckpt), "--domain", str(text), *out], "'--domain'", "expected NAME=FILE"),
        (["analyze", str(ckpt), "--domain", f"code={tmp_path / 'missing.py'}", *out], "'--domain'",
         "no such file"),
        (["compare", str(ckpt), str(tmp_path / "nowhere"), *out], "'checkpoint_b'", "does not exist"),
        (["compare", str(ckpt), str(ckpt), "--text", str(tmp_path / "missing.txt"), *out], "'--text'",
         "no such file"),
    )
    for args, where, needle in cases:
        result = runner.invoke(app, args)
        text_out = _text(result.output)
        assert result.exit_code == 2 and f"Invalid value for {where}" in text_out and needle in text_out, args
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_is_a_valid_out(tmp_path):
    (tmp_path / "old.txt").write_text("kept")
    result = runner.invoke(app, ["sphere", "--dims", "2,10", "--samples", "400", "--points", "9",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").is_file() and (tmp_path / "old.txt").read_text() == "kept"


@pytest.mark.parametrize(("args", "where", "needle"), [
    (["--dtype", "int8"], "'--dtype'", "dtype 'int8' is not supported; choose one of auto, float32, bfloat16, float16"),
    (["--device", "tpu"], "'--device'", "device 'tpu' is not supported; choose one of cpu, cuda, mps"),
    (["--device", "cuda"], "'--device'", "device 'cuda' is not available on this machine"),
])
def test_bad_dtype_or_device_is_refused_before_any_work(args, where, needle, tmp_path, monkeypatch):
    import torch

    _forbid_work(monkeypatch, "moescope.lab.run.run_lab")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["lab", "--model", str(tmp_path), *args, "--out", str(tmp_path / "out")])
    text = _text(result.output)
    assert result.exit_code == 2 and f"Invalid value for {where}" in text and needle in text, text
    assert "available: cpu" in text if "available" in needle else True
    result = runner.invoke(app, ["lab", "--dtype", "float16", "--out", str(tmp_path / "out")])  # the lab's own runs
    assert result.exit_code == 2 and "train in float32 or under bfloat16 autocast" in _text(result.output)
    result = runner.invoke(app, ["lab", "--device", "cpu", "--dtype", "auto", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "other dtypes apply to a given model (--model)" in _text(result.output)


@pytest.mark.parametrize("command", ["lab", "train"])
def test_bad_arch_is_refused_before_any_work_and_a_good_one_reaches_the_profile(command, tmp_path, monkeypatch):
    _forbid_work(monkeypatch, WORK[command][1])
    result = runner.invoke(app, [command, "--arch", "gpt2", "--out", str(tmp_path / "out")])
    text = _text(result.output)
    assert result.exit_code == 2 and "Invalid value for '--arch'" in text and "nanogpt, llama" in text, text
    seen = {}
    if command == "lab":
        monkeypatch.setattr("moescope.lab.run.run_lab", lambda cfg, **kw: seen.setdefault("arch", cfg.arch) and 1 / 0)
    else:
        monkeypatch.setattr("moescope.lab.runs.train_lab_runs", lambda p, out, **kw: seen.setdefault("arch", p.lm.arch)
                            and 1 / 0)
    for arch, want in ((None, "llama"), ("nanogpt", "nanogpt")):
        seen.clear()
        args = [] if arch is None else ["--arch", arch]
        runner.invoke(app, [command, *args, "--out", str(tmp_path / "out")])
        assert seen == {"arch": want}
