"""The sphere experiment: determinism, agreement with the exact laws, computed sentences."""

import json
import math

import pytest
from scipy import stats

from moescope.lab.sphere_laws import SphereConfig, run_sphere, total_rows, wilson_interval

SMALL = SphereConfig(dims=(3, 50, 800), samples=3000, points_per_query=99, seed=7)


@pytest.fixture(scope="module")
def small_results():
    return run_sphere(SMALL)


def test_wilson_matches_scipy():
    for k, n in [(0, 10), (7, 10), (4980, 5000), (10, 10)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.99, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_same_seed_same_numbers_and_other_seed_differs(small_results):
    again = run_sphere(SMALL)
    assert json.dumps(again, sort_keys=True) == json.dumps(small_results, sort_keys=True)
    other = run_sphere(SphereConfig(dims=(3, 50, 800), samples=3000, points_per_query=99, seed=8))
    assert other["per_dim"][0]["cos_std_mc"] != small_results["per_dim"][0]["cos_std_mc"]


def test_monte_carlo_agrees_with_exact(small_results):
    for r in small_results["per_dim"]:
        assert r["ks_pvalue"] > 1e-4
        assert r["cos_std_mc"] == pytest.approx(1 / math.sqrt(r["d"]), rel=0.1)
        assert r["contrast"]["trials"] == 3000 // 100
        for b in r["band"]:  # exact within 4.5 binomial standard errors of the estimate
            se = math.sqrt(b["exact"] * (1 - b["exact"]) / r["n_points"])
            assert abs(b["mc"] - b["exact"]) <= 4.5 * se + 1e-12
    contrasts = [r["contrast"]["median"] for r in small_results["per_dim"]]
    assert contrasts == sorted(contrasts, reverse=True)


def test_sentences_quote_the_computed_numbers(small_results):
    c1, c2, c3 = small_results["claims"]
    top = small_results["per_dim"][-1]
    assert f"{top['cos_std_mc']:.4f}" in c1["sentence"] and "d=800" in c1["sentence"]
    assert f"{c2['numbers']['contrast_high_d']:.3g}" in c2["sentence"]
    assert f"all but {c3['numbers']['outside_band_exact']:.2g} of the sphere" in c3["sentence"]
    low = run_sphere(SphereConfig(dims=(3, 40), samples=400, points_per_query=9))["claims"][2]
    assert f"{1 - low['numbers']['outside_band_exact']:.1%} of the sphere" in low["sentence"]
    assert c3["numbers"]["band_total"] == 3 * len(SMALL.band_eps)


def test_sentence_changes_when_the_data_changes():
    """A sentence is a function of the measurement: another seed gives another sentence."""
    a = run_sphere(SphereConfig(dims=(3, 20), samples=400, points_per_query=9, seed=1))
    b = run_sphere(SphereConfig(dims=(3, 20), samples=400, points_per_query=9, seed=2))
    assert a["claims"][0]["sentence"] != b["claims"][0]["sentence"]


def test_progress_callback_counts_every_row():
    seen = []
    run_sphere(SphereConfig(dims=(2, 5), samples=200, points_per_query=9), on_rows=seen.append)
    assert sum(seen) == total_rows(SphereConfig(dims=(2, 5), samples=200, points_per_query=9)) == 400


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": ()}, "at least one dimension"),
        ({"dims": (1, 5)}, "d=1"),
        ({"samples": 10, "points_per_query": 9}, r"samples must be >= 2 \* \(points_per_query \+ 1\) = 20"),
        ({"band_eps": (0.1, 1.2)}, "band_eps"),
        ({"capacity_delta": 0.0}, "capacity_delta"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SphereConfig(**kwargs)


def test_too_few_queries_gives_no_interval_and_valid_json():
    """Few queries per d: no distribution-free median interval (None, not ±inf, which JSON cannot hold)."""
    import json

    res = run_sphere(SphereConfig(dims=(3, 20), samples=400, points_per_query=99, seed=3))
    trials = [r["contrast"]["trials"] for r in res["per_dim"]]
    assert min(trials) < 6  # the binomial rule needs n >= 6 for a 95% interval
    assert any(r["contrast"]["median_ci95"] == [None, None] for r in res["per_dim"])
    json.dumps(res, allow_nan=False)
