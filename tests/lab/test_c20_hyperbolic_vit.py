"""Claim 20 (hyperbolic ViT vs its Euclidean twin): the rule on planted results, the experiment, the figures."""

import json
import math

import pytest

from moescope.lab.claims import c20_hyperbolic_vit as c20
from moescope.lab.hyperbolic_vit import run_hyperbolic_vit
from moescope.report.hyperbolic_vit_figures import FIGURES
from moescope.stats import Evidence, assess, combine


def _planted(hyp, euc):
    """A result of run_hyperbolic_vit's shape with the given per-seed test accuracies."""
    runs = [{"seed": i, "hyperbolic": {"test_accuracy": h, "train_loss": [2.3, 1.0, 0.5],
                                       "token_radius_mean": 3.0, "token_radius_max": 7.5},
             "euclidean": {"test_accuracy": e, "train_loss": [2.3, 1.2, 0.6]}}
            for i, (h, e) in enumerate(zip(hyp, euc, strict=True))]
    return {"profile": "quick", "seed": 0, "runs": runs, "params": {"hyperbolic": 4436, "euclidean": 4436},
            "config": {"n_classes": 10}, "max_dist0_float32": 17.33,
            "settings": {"seeds": len(runs), "n_train": 500, "n_test": 400, "epochs": 3, "batch_size": 100,
                         "lr": 0.02},
            "hyperbolic_accuracy": list(hyp), "euclidean_accuracy": list(euc)}


@pytest.mark.parametrize(("hyp", "euc", "verdict"), [
    # +4.7 points on every seed (sd 0.6 points): the whole interval is above the 1-point margin
    ([0.95, 0.96, 0.94], [0.90, 0.905, 0.90], "supported"),
    # the twin wins by ~5 points on every seed: the interval lies below −margin
    ([0.88, 0.87, 0.885], [0.93, 0.925, 0.93], "not supported"),
    # +3, −2, +1 points: mean +0.7, the interval straddles 0 and the margin
    ([0.93, 0.90, 0.92], [0.90, 0.92, 0.91], "inconclusive"),
    # a clear +16-point win by under-trained models (weaker model ~0.27 < 0.8): the comparison does not count
    ([0.45, 0.43, 0.44], [0.27, 0.26, 0.28], "inconclusive"),
])
def test_rule_on_planted_results(hyp, euc, verdict):
    v = c20.from_lab({"hyperbolic_vit": _planted(hyp, euc)})
    assert v.verdict == verdict
    diffs = [h - e for h, e in zip(hyp, euc, strict=True)]
    assert v.key.value == pytest.approx(sum(diffs) / len(diffs))      # the number shown is the number the rule used
    assessed = [assess(Evidence.from_dict(e)) for e in v.evidence]      # what recheck does
    assert combine([a.verdict for a in assessed]) == verdict
    assert v.claim_id == 20 and v.figures == c20.FIGURES and "ImageNet" in v.caveat
    assert "4,436" in v.construction[0]


def test_under_trained_comparison_is_never_a_finding_against():
    # the twin ~0.3 (not learned) and the hyperbolic model clearly behind: the difference alone would say
    # "not supported", but two models that have not learned the task are no evidence either way
    v = c20.evaluate(_planted([0.20, 0.21, 0.19], [0.30, 0.31, 0.30]))
    assert assess(Evidence.from_dict(v.evidence[0])).verdict == "not supported"
    assert assess(Evidence.from_dict(v.evidence[1])).verdict != "supported"
    assert v.verdict == "inconclusive"
    # the same gap between two models that have learned the task is a finding against
    v = c20.evaluate(_planted([0.86, 0.87, 0.85], [0.96, 0.97, 0.96]))
    assert v.verdict == "not supported"


def test_rule_text_states_the_margins():
    v = c20.evaluate(_planted([0.95, 0.96, 0.94], [0.90, 0.905, 0.90]))
    assert f"> {c20.MARGIN:.4g}" in v.rule and f"> {c20.LEARNED:.4g}" in v.rule
    assert c20.LECTURE.endswith("ポアンカレ球モデルでのViT")


def test_figures_draw_from_a_planted_result():
    res = _planted([0.95, 0.96, 0.94], [0.90, 0.905, 0.90])
    assert set(FIGURES) == set(c20.FIGURES)
    for _caption, draw in FIGURES.values():
        assert draw(res)[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_profile_and_seed():
    with pytest.raises(ValueError, match="profile must be one of .*'medium'"):
        run_hyperbolic_vit("medium")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        run_hyperbolic_vit("quick", seed=-1)


@pytest.fixture(scope="module")
def quick():
    return run_hyperbolic_vit("quick", seed=0)


@pytest.mark.slow
def test_quick_profile_runs_and_is_json_ready(quick):
    json.dumps(quick, allow_nan=False)
    assert quick["params"]["hyperbolic"] == quick["params"]["euclidean"]
    assert len(quick["runs"]) >= 3 and len({r["seed"] for r in quick["runs"]}) == len(quick["runs"])
    for r in quick["runs"]:
        assert 0.0 <= r["hyperbolic"]["test_accuracy"] <= 1.0 and 0.0 <= r["euclidean"]["test_accuracy"] <= 1.0
        assert all(math.isfinite(x) for g in ("hyperbolic", "euclidean") for x in r[g]["train_loss"])
        assert r["hyperbolic"]["token_radius_max"] < quick["max_dist0_float32"]
    v = c20.from_lab({"hyperbolic_vit": quick})
    assert v.verdict in ("supported", "not supported", "inconclusive")
    for _caption, draw in FIGURES.values():
        assert draw(quick)[:4] == b"\x89PNG"


@pytest.mark.slow
def test_quick_profile_is_deterministic(quick):
    again = run_hyperbolic_vit("quick", seed=0)
    assert again["hyperbolic_accuracy"] == quick["hyperbolic_accuracy"]
    assert again["euclidean_accuracy"] == quick["euclidean_accuracy"]
    for a, b in zip(again["runs"], quick["runs"], strict=True):
        for g in ("hyperbolic", "euclidean"):
            assert a[g]["train_loss"] == pytest.approx(b[g]["train_loss"], abs=1e-6)
