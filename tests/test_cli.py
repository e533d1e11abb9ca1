"""The command line end to end, in a temporary folder (typer's CliRunner)."""

import json
import re

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
