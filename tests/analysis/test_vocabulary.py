"""Vocabulary specialisation: shares recomputed from raw choices, Wilson against scipy, planted and null cases."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from moescope.analysis.routing import RoutingStats
from moescope.analysis.vocabulary import vocabulary_specialisation, wilson_interval
from moescope.models.view import RoutingRecord


def test_wilson_equals_scipy():
    hits, n = np.array([0, 3, 7, 20, 50]), np.array([5, 10, 7, 40, 50])
    lo, hi = wilson_interval(hits, n)
    for h, m, a, b in zip(hits, n, lo, hi, strict=True):
        ci = binomtest(int(h), int(m)).proportion_ci(0.95, method="wilson")
        assert (a, b) == pytest.approx((ci.low, ci.high), abs=1e-12)


def _routed(choices: np.ndarray, ids: np.ndarray, e: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Through RoutingStats, as analyze does: (V, E) table, (V,) occurrences, tokens."""
    t, k = choices.shape
    scores = torch.rand(t, e, generator=torch.Generator().manual_seed(0)) + 0.1
    rec = RoutingRecord(layer=0, indices=torch.as_tensor(choices), weights=torch.full((t, k), 1.0 / k),
                        scores=scores, batch_shape=(1, t), mask=torch.ones(t, dtype=torch.bool),
                        token_ids=torch.as_tensor(ids))
    stats = RoutingStats(e, k, num_layers=1, vocab_size=int(ids.max()) + 1)
    stats.update(rec)
    return stats.layers[0].token_expert.numpy(), stats.layers[0].token_seen.numpy(), t


def test_shares_equal_counts_from_raw_choices():
    rng = np.random.default_rng(1)
    e, k, t = 6, 2, 600
    ids = rng.integers(0, 12, t)
    choices = np.stack([rng.choice(e, k, replace=False) for _ in range(t)])
    table, seen, tokens = _routed(choices, ids, e)
    res = vocabulary_specialisation(table, seen, tokens, top=3)
    rate = np.array([(choices == j).any(1).mean() for j in range(e)])
    assert res["chance"] == pytest.approx(rate.tolist())
    for j, listed in enumerate(res["experts"]):
        for row in listed:
            mine = ids == row["id"]
            share = (choices[mine] == j).any(1).mean()
            assert row["count"] == mine.sum() and row["share"] == pytest.approx(share)
            assert row["corrected"] == pytest.approx((share - rate[j]) / (1 - rate[j]))


def test_planted_token_experts_found_and_null_is_calibrated():
    rng = np.random.default_rng(2)
    e, t = 4, 2000
    ids = rng.integers(0, 40, t)
    planted = (ids % e)[:, None]                          # token v always goes to expert v mod E
    res = vocabulary_specialisation(*_routed(planted, ids, e))
    assert res["summary"]["excess"] > 0.5 and res["summary"]["interval"][0] > 0.5
    assert all(row["id"] % e == j and row["share"] == 1.0 for j, rows in enumerate(res["experts"]) for row in rows)
    outside = 0
    for seed in range(20):                                # routing blind to the token: the interval holds 0
        r = np.random.default_rng(100 + seed)
        blind = r.choice(e, size=(t, 1), p=[0.4, 0.3, 0.2, 0.1])
        s = vocabulary_specialisation(*_routed(blind, ids, e), seed=seed)["summary"]
        outside += not s["interval"][0] <= 0 <= s["interval"][1]
    assert outside <= 3                                   # 95% intervals: about 1 of 20 expected


def test_rare_tokens_are_not_ranked_and_bad_input_refused():
    table = np.array([[2, 0], [0, 9]])
    res = vocabulary_specialisation(table, np.array([2, 9]), 11, min_count=5)
    assert res["tokens_ranked"] == 1 and [r["id"] for r in res["experts"][1]] == [1] and res["experts"][0] == []
    with pytest.raises(ValueError, match="more often than it occurs"):
        vocabulary_specialisation(table, np.array([1, 9]), 10)
    with pytest.raises(ValueError, match="min_count"):
        vocabulary_specialisation(table, np.array([2, 9]), 11, min_count=0)
