"""The linearity law: hand-derived shifts, and the d vs √d growth across dimensions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moescope.adversarial import linearity_sweep, score_shift
from moescope.adversarial.linearity import loglog_slope


def test_score_shift_hand_example():
    # w = (1, −2, 3): ‖w‖₁ = 6, ‖w‖₂ = √14; an L∞ step 0.1·sign(w) moves w·x by 0.6.
    layer = nn.Linear(3, 1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
        layer.bias.fill_(0.3)
    x = torch.tensor([[0.2, 0.5, 0.9], [0.0, 0.0, 0.0]], dtype=torch.float64)
    s = score_shift(layer, x, 0.1)
    torch.testing.assert_close(s["linf"], torch.full((2, 1), 0.6, dtype=torch.float64))
    torch.testing.assert_close(s["l2"], torch.full((2, 1), 0.1 * math.sqrt(14), dtype=torch.float64))
    assert float(s["l1_norm"][0]) == 6.0


def test_sweep_grows_like_d_and_sqrt_d():
    res = linearity_sweep((10, 100, 1000, 10_000), eps=0.01, seed=0)
    assert res["slope_linf"] == pytest.approx(1.0, abs=0.03)
    assert res["slope_l2"] == pytest.approx(0.5, abs=0.03)
    for r in res["rows"]:
        assert r["max_rel_gap_linf"] < 1e-10 and r["max_rel_gap_l2"] < 1e-10
        assert r["shift_linf_per_eps"] == pytest.approx(r["l1_expected"], rel=0.25)
        assert r["shift_l2_per_eps"] == pytest.approx(r["l2_expected"], rel=0.25)
    top = res["rows"][-1]
    assert top["shift_linf_per_eps"] / top["shift_l2_per_eps"] == pytest.approx(math.sqrt(2e4 / math.pi), rel=0.05)


def test_loglog_slope_hand_value():
    assert loglog_slope([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0)
    assert loglog_slope([4, 16, 64], [2, 4, 8]) == pytest.approx(0.5)


def test_eps_zero_is_rejected():
    with pytest.raises(ValueError, match="eps must be > 0"):
        linearity_sweep((10,), eps=0.0)
