"""Claim 17's rule on planted experiment dicts, and the product-forest experiment's quick profile."""

import pytest

from moescope.lab.claims import c17_product_forests as c17
from moescope.lab.product_forests import DATASETS, run_product_forests
from moescope.report.product_forests_figures import FIGURES


def _planted(product: list[float], ambient: list[float], same: list[float] | None = None) -> dict:
    """``same``: scikit-learn's forest on the product forest's own columns (default: the ambient accuracies)."""
    seeds = list(range(len(product)))
    same = ambient if same is None else same
    per = {name: {"signature": "H2", "n": 100, "classes": 3, "product": product, "ambient": ambient,
                  "same_columns": same, "params_product": [100] * len(seeds), "params_ambient": [120] * len(seeds)}
           for name in DATASETS}
    return {"product_forests": {"seeds": seeds, "datasets": per, "product_mean": product, "ambient_mean": ambient,
                                "same_columns_mean": same,
                                "capacity": dict.fromkeys(DATASETS, 1000), "n_estimators": 24, "max_depth": 6,
                                "test_fraction": 0.3}}


@pytest.mark.parametrize(("product", "ambient", "verdict"), [
    ([0.90, 0.92, 0.91, 0.93, 0.90], [0.80, 0.81, 0.80, 0.82, 0.79], "supported"),        # +0.11, tight
    ([0.80, 0.81, 0.79, 0.80, 0.80], [0.85, 0.86, 0.84, 0.86, 0.85], "not supported"),    # −0.05, tight
    ([0.90, 0.80, 0.85, 0.95, 0.75], [0.85, 0.86, 0.84, 0.86, 0.85], "inconclusive"),     # straddles ±0.02
    ([0.86, 0.87, 0.86, 0.87, 0.86], [0.85, 0.86, 0.85, 0.86, 0.85], "inconclusive"),     # +0.01: inside margin
])
def test_rule_on_planted_results(product, ambient, verdict):
    v = c17.from_lab(_planted(product, ambient))
    assert v.verdict == verdict
    assert v.claim_id == c17.ID == 17
    assert v.key.value == pytest.approx(sum(product) / 5 - sum(ambient) / 5)
    assert "paired t-interval over seeds" in v.rule and "0.02" in v.rule


def test_a_gain_the_coordinates_alone_explain_is_not_a_finding():
    """The product forest beats the ambient forest, but an axis-aligned forest on its own columns does as well."""
    product = [0.90, 0.92, 0.91, 0.93, 0.90]
    v = c17.from_lab(_planted(product, [0.80, 0.81, 0.80, 0.82, 0.79], same=[0.90, 0.91, 0.92, 0.93, 0.90]))
    assert v.verdict == "inconclusive" and len(v.evidence) == 2
    v = c17.from_lab(_planted(product, [0.80, 0.81, 0.80, 0.82, 0.79], same=[0.95, 0.96, 0.95, 0.97, 0.95]))
    assert v.verdict == "not supported"


def test_figure_renders_from_a_planted_result():
    png = FIGURES["product_forests.png"][1](_planted([0.9, 0.8, 0.85], [0.8, 0.82, 0.8])["product_forests"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(FIGURES) == set(c17.FIGURES)


def test_bad_profile_raises():
    with pytest.raises(ValueError, match=r"profile must be one of \('quick', 'full'\); got profile='fast'"):
        run_product_forests("fast")


@pytest.mark.slow
def test_quick_profile_runs_and_is_deterministic():
    a = run_product_forests("quick", seed=1)
    b = run_product_forests("quick", seed=1)
    a.pop("seconds")
    b.pop("seconds")
    assert a == b
    assert len(a["seeds"]) >= 3 and set(a["datasets"]) == set(DATASETS)
    for d in a["datasets"].values():
        assert all(0.0 <= x <= 1.0 for x in d["product"] + d["ambient"])
    verdict = c17.from_lab({"product_forests": a})
    assert verdict.verdict in ("supported", "not supported", "inconclusive")
