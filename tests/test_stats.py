"""moescope.stats: intervals against scipy, the decision rule on planted intervals, NMI against sklearn."""

import math

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import normalized_mutual_info_score

from moescope.stats import (
    Evidence,
    assess,
    bootstrap_interval,
    combine,
    decide,
    median_interval,
    normalized_mutual_information,
    permutation_pvalue,
    permutation_ratio,
    permutation_shift,
    t_interval,
)


@pytest.mark.parametrize("n", [2, 3, 5, 30])
def test_t_interval_equals_scipy(n):
    x = np.random.default_rng(n).normal(1.0, 2.0, n)
    lo, hi = t_interval(x, 0.95)
    ref = st.t.interval(0.95, n - 1, loc=x.mean(), scale=st.sem(x))
    assert lo == pytest.approx(ref[0], rel=1e-12) and hi == pytest.approx(ref[1], rel=1e-12)


def test_one_replicate_or_identical_replicates_have_no_interval():
    assert t_interval([0.3]) == (-math.inf, math.inf)
    assert t_interval([0.021, 0.021, 0.021]) == (-math.inf, math.inf)      # not independent draws
    assert t_interval([5.55 - 5.40, 5.56 - 5.41, 5.54 - 5.39]) == (-math.inf, math.inf)   # equal up to rounding
    assert bootstrap_interval([1.0, 2.0, 3.0]) == (-math.inf, math.inf)    # too few units for a bootstrap
    assert assess(Evidence("x", "t", [5.0], reference=0, margin=0.1, side="greater")).verdict == "inconclusive"


def test_bootstrap_matches_scipy_percentile():
    x = np.random.default_rng(0).exponential(1.0, 200)
    lo, hi = bootstrap_interval(x, 0.95, draws=4000, seed=1)
    ref = st.bootstrap((x,), np.mean, confidence_level=0.95, method="percentile", n_resamples=4000,
                       random_state=np.random.default_rng(2)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)


def test_median_interval_covers_and_is_the_binomial_rule():
    rng = np.random.default_rng(3)
    intervals = [median_interval(rng.normal(size=25)) for _ in range(2000)]
    cover = np.mean([lo <= 0 <= hi for lo, hi in intervals])
    assert 0.94 <= cover <= 0.985                           # exact coverage 0.957 for n = 25 (j = 8)
    x = np.arange(1.0, 26.0)
    assert median_interval(x) == (8.0, 18.0)                # Conover's table: n = 25 -> x(8), x(18)
    assert median_interval([1.0, 2.0, 3.0]) == (-math.inf, math.inf)   # too few for 95%


def test_permutation_pvalue_by_hand():
    null = [1, 2, 3, 4]
    assert permutation_pvalue(2.5, null, "less") == pytest.approx(3 / 5)    # (1 + #{<= 2.5}) / (1 + 4)
    assert permutation_pvalue(2.5, null, "greater") == pytest.approx(3 / 5)
    assert permutation_pvalue(0.0, null, "less") == pytest.approx(1 / 5)
    # a draw equal to the observed value but for rounding counts as at least as extreme
    assert permutation_pvalue(0.1 + 0.2, [0.3, 0.0], "greater") == pytest.approx(2 / 3)
    assert permutation_pvalue(0.3, [0.1 + 0.2, 1.0], "less") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="side must be"):
        permutation_pvalue(1.0, null, "two")


def test_permutation_ratio_and_shift_by_hand():
    effect, interval = permutation_ratio([2.0, 3.0], [[1.0, 3.0], [2.0, 4.0]])
    assert effect == pytest.approx((2 / 2 + 3 / 3) / 2)
    assert interval == (-math.inf, math.inf)                  # 2 draws cannot make a 95% interval
    effect, _ = permutation_shift([2.0, 3.0], [[1.0, 3.0], [2.0, 4.0]])
    assert effect == pytest.approx(0.0)
    effect, (lo, hi) = permutation_shift([20.0], [list(range(1, 40))])   # 39 draws: k = floor(0.025 * 40) = 1
    assert effect == pytest.approx(0.0) and (lo, hi) == (20.0 - 39, 20.0 - 1)   # the extreme draws
    _, (lo, hi) = permutation_shift([0.0], [list(range(79))])                  # 79 draws: k = 2
    assert (lo, hi) == (-77.0, -1.0)


def test_permutation_interval_has_its_level_under_an_exchangeable_null():
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(2000):                 # the observation is one more draw of the null: "supported" <= 2.5%
        draws = rng.normal(size=101)
        _, (lo, _) = permutation_shift([draws[0]], [draws[1:]])
        hits += lo > 0
    assert hits / 2000 <= 0.035


@pytest.mark.parametrize(("interval", "side", "verdict"), [
    ((0.2, 0.4), "greater", "supported"),           # wholly beyond 0 + 0.1
    ((0.05, 0.4), "greater", "inconclusive"),       # straddles the margin
    ((-0.05, 0.05), "greater", "inconclusive"),     # tight at the reference: no effect either way
    ((-0.4, -0.2), "greater", "not supported"),     # wholly beyond 0 - 0.1 on the other side
    ((-0.4, -0.2), "less", "supported"),
    ((0.2, 0.4), "less", "not supported"),
    ((-math.inf, math.inf), "less", "inconclusive"),
])
def test_decide_on_planted_intervals(interval, side, verdict):
    assert decide(interval, reference=0.0, margin=0.1, side=side) == verdict


def test_combine_is_a_conjunction():
    assert combine(["supported", "supported"]) == "supported"
    assert combine(["supported", "inconclusive"]) == "inconclusive"
    assert combine(["supported", "not supported"]) == "not supported"
    with pytest.raises(ValueError):
        combine([])


def test_nmi_equals_sklearn_min_normalisation():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 3, 5000), rng.integers(0, 8, 5000)
    b[:2500] = a[:2500] * 2                                # partial dependence
    table = np.zeros((3, 8))
    np.add.at(table, (a, b), 1)
    assert normalized_mutual_information(table) == pytest.approx(
        normalized_mutual_info_score(a, b, average_method="min"), abs=1e-10)


def test_nmi_is_zero_under_collapse_and_one_when_determined():
    assert normalized_mutual_information(np.array([[50, 0, 0], [40, 0, 0]])) == 0.0   # every domain -> expert 0
    assert normalized_mutual_information(np.array([[10, 10, 0, 0], [5, 5, 0, 0]])) == pytest.approx(0.0, abs=1e-12)
    assert normalized_mutual_information(np.array([[30, 0], [0, 20]])) == pytest.approx(1.0)


def test_evidence_round_trip_and_assessment_by_method():
    evs = [Evidence("t", "t", [1.0, 1.2, 0.9], reference=0, margin=0.1, side="greater"),
           Evidence("p", "paired_t", [1.0, 2.0, 3.0], against=[0.5, 1.4, 2.6], reference=0, margin=0.1,
                    side="greater"),
           Evidence("b", "bootstrap", np.random.default_rng(0).normal(1, 0.1, 50), reference=0, margin=0.1,
                    side="greater", seed=3),
           Evidence("r", "permutation_ratio", [0.5, 0.6], null=[np.linspace(0.9, 1.1, 40), np.linspace(0.95, 1.05, 40)],
                    reference=1, margin=0.05, side="less"),
           Evidence("s", "permutation_shift", [0.5], null=[np.linspace(-0.1, 0.1, 40)], reference=0, margin=0.05,
                    side="greater"),
           Evidence("e", "exact", [0.3], reference=1, margin=0.25, side="less")]
    for ev in evs:
        again = Evidence.from_dict(ev.to_dict())
        assert again == ev and assess(again) == assess(ev)
        assert assess(ev).verdict == "supported", ev.name
    assert assess(evs[1]).effect == pytest.approx(np.mean([0.5, 0.6, 0.4]))
    assert assess(evs[3]).p_value is not None and assess(evs[0]).p_value is None


@pytest.mark.parametrize(("kw", "match"), [
    ({"method": "z"}, "method must be one of"),
    ({"side": "up"}, "side must be one of"),
    ({"values": [1.0, float("nan")]}, "must be finite"),
    ({"values": []}, "at least one value"),
    ({"method": "paired_t", "against": [1.0]}, "as many 'against'"),
    ({"level": 1.5}, "level must lie in"),
    ({"margin": -1.0}, "margin must be >= 0"),
])
def test_bad_evidence_is_refused_when_built(kw, match):
    base = {"name": "x", "method": "t", "values": [1.0, 2.0], "reference": 0.0, "margin": 0.1, "side": "greater"}
    with pytest.raises(ValueError, match=match):
        Evidence(**{**base, **kw})
