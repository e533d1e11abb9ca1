"""The attack experiment: validated config, progress, strict JSON, sentences from the numbers."""

from __future__ import annotations

import json

import pytest

from moescope.adversarial.experiment import AttackConfig, run_experiment, stages

TINY = {"attack_points": 30, "boundary_points": 4, "directions": 4, "sizes": (8, 16), "epochs": 2, "examples": 3,
        "linear_dims": (10, 100), "linear_points": 1, "linear_directions": 10, "linearity_dims": (10, 100),
        "eps": (0.0, 0.05, 0.2)}


@pytest.fixture(scope="module")
def tiny_run():
    calls = []
    cfg = AttackConfig(dataset="digits", attack="fgsm", **TINY)
    res = run_experiment(cfg, progress=lambda stage, done, total: calls.append((stage, done, total)))
    return cfg, res, calls


def test_progress_reports_every_stage(tiny_run):
    cfg, _, calls = tiny_run
    total = stages(cfg)
    assert all(t == total for _, _, t in calls)
    assert [d for _, d, _ in calls] == list(range(total + 1))
    assert calls[-1][0] == "done"


def test_results_are_strict_json_with_every_section(tiny_run):
    _, res, _ = tiny_run
    text = json.dumps(res, allow_nan=False)
    assert json.loads(text) == res
    assert res["eps"] == [0.0, 0.05, 0.2]
    assert set(res["models"]) == {"softmax regression", "MLP"}
    assert [r["d"] for r in res["sweep"]] == [64, 64, 256, 256]
    for m in res["models"].values():
        for attack in ("fgsm", "pgd", "noise"):
            acc = m["curves"][attack]["robust_accuracy"]
            assert acc[0] == m["clean_accuracy"]  # ε = 0 leaves every point as it was
            assert len(acc) == 3
        assert m["curves"]["pgd"]["robust_accuracy"][-1] <= m["curves"]["noise"]["robust_accuracy"][-1]
    assert len(res["examples"]["label"]) == 3 and res["examples"]["attack"] == "fgsm"
    assert res["gilmer"] is None
    assert res["curves"]["ratio_d"][0] < 10 < 100 < res["curves"]["ratio_d"][-1]


def test_sentences_quote_the_measured_numbers(tiny_run):
    _, res, _ = tiny_run
    ids = [s["id"] for s in res["sentences"]]
    assert ids == ["attacks", "deepfool", "shortcut", "linearity", "sweep"]
    attacks = res["sentences"][0]
    n = attacks["numbers"]
    assert f"{n['fgsm']:.1%}" in attacks["sentence"] and f"ε = {n['eps']:g}" in attacks["sentence"]
    shortcut = res["sentences"][2]
    assert f"{shortcut['numbers']['median_ratio']:.3g}" in shortcut["sentence"]
    assert all("nan" not in s["sentence"] for s in res["sentences"])


def test_same_seed_same_results_other_seed_differs(tiny_run):
    cfg, res, _ = tiny_run
    again = run_experiment(cfg)
    assert json.dumps(again, sort_keys=True) == json.dumps(res, sort_keys=True)
    other = run_experiment(AttackConfig(dataset="digits", attack="fgsm", seed=1, **{**TINY, "sizes": (8,)}))
    assert other["models"]["MLP"]["curves"] != res["models"]["MLP"]["curves"]


def test_deepfool_featured_comes_first():
    cfg = AttackConfig(dataset="digits", attack="deepfool", **{**TINY, "sizes": (8,)})
    res = run_experiment(cfg)
    assert res["sentences"][0]["id"] == "deepfool"
    assert res["examples"]["eps"] is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"dataset": "mnist"}, "dataset must be one of"), ({"attack": "cw"}, "attack must be one of"),
     ({"eps": (0.1, -0.1)}, "eps must be a finite real number >= 0"), ({"eps": ()}, "eps must list"),
     ({"directions": 0}, "directions must be >= 1"), ({"sizes": (1,)}, "sizes must list")],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackConfig(**kwargs)
