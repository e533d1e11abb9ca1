"""moescope lab end to end on a subset of claims: verdicts computed, report written, CLI."""

import json

import pytest
from typer.testing import CliRunner

from moescope.cli import app
from moescope.lab.run import LabConfig, run_lab
from moescope.report.lab import lab_figures, write_lab_report

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_subset():
    return run_lab(LabConfig(claims=(1, 2, 3), seed=3))


def test_verdicts_and_report(quick_subset, tmp_path):
    res = quick_subset
    assert [v["claim_id"] for v in res["verdicts"]] == [1, 2, 3]
    assert set(res["timings"]) == {"sphere"}                            # claims share one sphere run
    written = write_lab_report(res, lab_figures(res), tmp_path)
    html = written["report"].read_text()
    for v in res["verdicts"]:
        assert f'id="claim-{v["claim_id"]}"' in html and v["verdict"] in html
        for fig in v["figures"]:
            assert (tmp_path / fig).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(written["results"].read_text())["verdicts"] == json.loads(json.dumps(res["verdicts"]))


def test_same_seed_same_numbers():
    a = run_lab(LabConfig(claims=(1, 2), seed=5))
    b = run_lab(LabConfig(claims=(1, 2), seed=5))
    assert json.dumps(a["data"]["sphere"], sort_keys=True) == json.dumps(b["data"]["sphere"], sort_keys=True)
    assert [v["numbers"] for v in a["verdicts"]] == [v["numbers"] for v in b["verdicts"]]


def test_bad_config():
    with pytest.raises(ValueError, match="profile must be one of"):
        LabConfig(profile="medium")
    with pytest.raises(ValueError, match="claims must be among"):
        LabConfig(claims=(99,))
    result = runner.invoke(app, ["lab", "--claims", "1,x"])
    assert result.exit_code == 2


def test_cli_lab_subset(tmp_path):
    result = runner.invoke(app, ["lab", "--claims", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").is_file() and (tmp_path / "equator_band.png").is_file()
