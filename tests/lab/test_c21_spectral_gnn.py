"""Claim 21 (CUSP vs a GCN of equal parameters): the rule on planted results, the experiment, the figures."""

import dataclasses
import json

import pytest

from moescope.lab import spectral_gnn
from moescope.lab.claims import c21_spectral_gnn as c21
from moescope.report.spectral_gnn_figures import FIGURES


def _planted(het_cusp, het_gcn, homo_cusp=(0.8, 0.82, 0.79), homo_gcn=(0.8, 0.8, 0.8)) -> dict:
    return {"spectral_gnn": {
        "seeds": [0, 1, 2], "config": {"families": ["sbm"], "nodes": 90, "features": 8, "cusp": {"order": 3}},
        "params": {"cusp": 209, "gcn": 209, "gcn_widths": [9, 6, 7]},
        "per_seed": {"heterophilic": {"cusp": list(het_cusp), "gcn": list(het_gcn)},
                     "homophilic": {"cusp": list(homo_cusp), "gcn": list(homo_gcn)}}}}


@pytest.mark.parametrize("het_cusp, het_gcn, verdict", [
    ((0.60, 0.62, 0.61), (0.40, 0.41, 0.39), "supported"),          # +0.21, tight
    ((0.30, 0.31, 0.29), (0.50, 0.50, 0.52), "not supported"),      # −0.21, tight
    ((0.50, 0.40, 0.45), (0.42, 0.47, 0.44), "inconclusive"),       # ≈ 0, straddles the margin
])
def test_rule_on_planted_results(het_cusp, het_gcn, verdict):
    v = c21.from_lab(_planted(het_cusp, het_gcn))
    assert v.verdict == verdict
    assert v.claim_id == 21 and v.figures == c21.FIGURES
    assert v.key.value == pytest.approx(sum(het_cusp) / 3 - sum(het_gcn) / 3)   # the number the rule used
    assert "Chameleon" in v.caveat and "0.02" in v.rule


def test_homophilic_result_does_not_decide():
    # a large homophilic loss with a clear heterophilic gain: still supported (the rule is on heterophily)
    v = c21.from_lab(_planted((0.6, 0.62, 0.61), (0.4, 0.41, 0.39), homo_cusp=(0.5, 0.52, 0.49)))
    assert v.verdict == "supported" and v.numbers["homophilic"]["verdict"] == "not supported"


def test_bad_profile():
    with pytest.raises(ValueError, match="profile.*quick.*full"):
        spectral_gnn.run_spectral_gnn("huge")


def test_deterministic_on_a_tiny_profile(monkeypatch):
    tiny = dataclasses.replace(spectral_gnn.PROFILES["quick"], nodes=24, epochs=3, families=("ring",))
    monkeypatch.setitem(spectral_gnn.PROFILES, "quick", tiny)
    a, b = spectral_gnn.run_spectral_gnn("quick", seed=3), spectral_gnn.run_spectral_gnn("quick", seed=3)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["params"]["cusp"] == a["params"]["gcn"] and len(a["seeds"]) >= 3


@pytest.mark.slow
def test_quick_profile_runs_judges_and_draws():
    data = spectral_gnn.run_spectral_gnn("quick", seed=0)
    json.dumps(data, allow_nan=False)                                # JSON-ready, no NaN
    assert {r["regime"] for r in data["runs"]} == {"homophilic", "heterophilic"}
    v = c21.from_lab({"spectral_gnn": data})
    assert v.verdict in ("supported", "not supported", "inconclusive")
    for name, (caption, draw) in FIGURES.items():
        assert name in c21.FIGURES and caption
        assert draw(data)[:8] == b"\x89PNG\r\n\x1a\n"
