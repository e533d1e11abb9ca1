"""``moescope ablate`` on a lab run: the run's own model on the lab's validation text of each domain."""

import json
from dataclasses import replace

import pytest
from lab_fixtures import TINY_CORPUS, TINY_LM, TINY_TRAIN
from typer.testing import CliRunner

from moescope.cli import app
from moescope.lab import runs
from moescope.lab.ablation import is_lab_run, load_lab_run


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    p = runs.Profile(name="tiny", corpus=TINY_CORPUS, lm=replace(TINY_LM, vocab_size=300), train=TINY_TRAIN,
                     jobs=1)
    out = tmp_path_factory.mktemp("lab")
    runs.run_profile(p, out, only=(runs.BASELINE, runs.SOFT, runs.DENSE_ACTIVE), progress=False)
    return out / "runs"


def test_a_lab_run_is_ablated_on_its_validation_text(lab, tmp_path):
    assert is_lab_run(lab / runs.BASELINE) and not is_lab_run(lab)
    _, views, domains, about = load_lab_run(lab / runs.BASELINE, seq_len=128, max_windows=5)
    assert set(domains) == {"code", "language", "math"}
    assert all(w.shape == (5, TINY_LM.seq_len) for w in domains.values())  # capped at the model's context
    assert "step 12" in about["model_type"] and len(views) == TINY_LM.n_layer
    result = CliRunner().invoke(app, ["ablate", str(lab / runs.BASELINE), "--max-windows", "10", "--mode", "zero",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["text"]) == {"code", "language", "math"}
    assert saved["config"]["cells"] == TINY_LM.n_layer * TINY_LM.moe.num_experts


@pytest.mark.parametrize(("run", "message"), [(runs.SOFT, "only the lab's causal runs"),
                                              (runs.DENSE_ACTIVE, "has no MoE layer")])
def test_runs_without_a_next_token_loss_or_experts_are_refused(lab, run, message):
    with pytest.raises(ValueError, match=message):
        load_lab_run(lab / run, seq_len=16, max_windows=4)


def test_hugging_face_options_are_refused_for_a_lab_run(lab):
    result = CliRunner().invoke(app, ["ablate", str(lab / runs.BASELINE), "--dtype", "bfloat16"])
    assert result.exit_code == 2 and "lab run" in result.output


def test_a_lab_run_is_steered_between_two_of_its_domains(lab, tmp_path):
    out = tmp_path / "steer"
    result = CliRunner().invoke(app, ["steer", str(lab / runs.BASELINE), "--contrast", "math", "--contrast",
                                      "code", "--max-windows", "12", "--random-draws", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["sets"] == ["math", "code"]
    bad = CliRunner().invoke(app, ["steer", str(lab / runs.BASELINE), "--contrast", "poetry", "--contrast",
                                   "code", "--out", str(out)])
    assert bad.exit_code == 1 and "no domain ['poetry']" in bad.output
