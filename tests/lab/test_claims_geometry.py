"""Claims 1-4 and claim 5's measurement: verdicts follow the measurements (planted inputs flip them)."""

import math

import pytest

from moescope.lab.claims import c01_orthogonality, c02_equidistance, c03_equator, c04_shortcuts, c05_sparse_compute
from moescope.lab.sphere_laws import SphereConfig, run_sphere


def _sphere(sd_power=-0.5, contrast_power=-0.5, q99_scale=2.6, ks=0.5, dims=(10, 100, 1000, 10000)):
    per = []
    for d in dims:
        per.append({"d": d, "n_pairs": 1000, "cos_std_mc": d**sd_power, "abs_cos_q99_mc": q99_scale * d**sd_power,
                    "ks_pvalue": ks, "contrast": {"median": 3.0 * d**contrast_power, "sem": 0.01, "n_points": 999,
                                                  "median_ci95": [2.9 * d**contrast_power, 3.1 * d**contrast_power],
                                                  "prediction": 3.0 * d**contrast_power}})
    return {"per_dim": per}


def test_claim1_flips_with_the_data():
    assert c01_orthogonality.evaluate(_sphere()).verdict == "supported"
    assert c01_orthogonality.evaluate(_sphere(sd_power=0.0, q99_scale=0.5, ks=1e-6)).verdict == "not supported"
    assert c01_orthogonality.evaluate(_sphere(ks=1e-6)).verdict == "inconclusive"


def test_claim2_flips_with_the_data():
    assert c02_equidistance.evaluate(_sphere()).verdict == "supported"
    flat = _sphere(contrast_power=0.0)
    for r in flat["per_dim"]:  # measured flat contrast while the exact law predicts a fall
        r["contrast"]["prediction"] = 3.0 * r["d"] ** -0.5
    assert c02_equidistance.evaluate(flat).verdict == "not supported"


def test_claim3_on_real_runs():
    high = run_sphere(SphereConfig(dims=(3, 3000), samples=2000, points_per_query=99))
    low = run_sphere(SphereConfig(dims=(3, 20), samples=2000, points_per_query=99))
    v = c03_equator.evaluate(high)
    assert v.verdict == "supported" and v.key.value > 0.99
    assert c03_equator.evaluate(low).verdict != "supported"   # d = 20: the band holds only ~35%
    assert c03_equator.misses_plausible(1, 6) and not c03_equator.misses_plausible(4, 6)


def _digits(ratio_top=30.0, slope=0.5, pgd=0.2, noise=0.95):
    d = [64, 256, 1024]
    sweep = [{"model": "MLP", "d": x, "boundary": {"median_ratio": ratio_top * (x / 1024) ** slope,
                                                  "median_ratio_ci99": [0.9 * ratio_top * (x / 1024) ** slope,
                                                                        1.1 * ratio_top * (x / 1024) ** slope],
                                                  "theory_median_ratio": math.sqrt(x) / 0.6745}} for x in d]
    curves = {k: {"robust_accuracy": [1.0, v]} for k, v in (("noise", noise), ("pgd", pgd), ("fgsm", pgd))}
    return {"eps": [0.0, 0.15], "models": {"MLP": {"curves": curves}}, "sweep": sweep}


def test_claim4_flips_with_the_data():
    assert c04_shortcuts.evaluate(_digits()).verdict == "supported"
    assert c04_shortcuts.evaluate(_digits(ratio_top=1.2, slope=0.0, pgd=0.9)).verdict == "not supported"
    assert c04_shortcuts.evaluate(_digits(slope=0.0)).verdict == "inconclusive"


def test_claim5_measurement_counts_flops_exactly():
    m = c05_sparse_compute.measure(hidden=16, intermediate=8, experts=4, top_k=2, tokens=32, repeats=1)
    assert m["flops_per_token_moe"] == 2 * (2 * 3 * 16 * 8 + 16 * 4)
    assert m["flops_per_token_dense"] == 2 * 4 * 3 * 16 * 8
    assert m["params_moe"] - 16 * 4 == m["params_dense"]  # equal expert parameters; the router is extra


def test_decide_without_conditions_is_refused():
    """No condition cannot mean "all hold": an empty set of conditions is a bug in the claim, not support."""
    from moescope.lab.verdict import decide

    with pytest.raises(ValueError, match="at least one condition"):
        decide({})
    assert decide({"a": True, "b": True}) == "supported" and decide({"a": True, "b": False}) == "inconclusive"
    assert decide({"a": False}) == "not supported"
