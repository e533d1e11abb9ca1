"""Claim 3: almost all of the sphere lies near the equator; the poles are empty."""

from __future__ import annotations

import math

from moescope import geometry as geo
from moescope.lab.verdict import KeyNumber, Verdict, decide

CLAIM = "Almost all of the sphere lies near the equator; the poles are empty"
LECTURE = "赤道集中現象: 高次元球面では「ほぼすべての点が赤道付近」… 極にはほとんど誰もいない"
ID = 3
NEEDS = ("sphere",)
FIGURES = ("equator_band.png",)
# "Almost all": at least 99% within |x1| <= 0.1 at the largest d measured (>= 1000).
ALMOST_ALL = 0.99
# "Empty poles": the cap x1 >= 0.5 (60° from the pole) holds less than 1e-6.
EMPTY_CAP = 1e-6


def misses_plausible(misses: int, n: int, miss_rate: float = 0.01, alpha: float = 1e-3) -> bool:
    """Is seeing >= ``misses`` interval misses out of n plausible if each misses at ``miss_rate``?"""
    from scipy import stats

    return misses == 0 or float(stats.binom.sf(misses - 1, n, miss_rate)) >= alpha


def evaluate(sphere: dict) -> Verdict:
    top = sphere["per_dim"][-1]
    band = next(b for b in top["band"] if abs(b["eps"] - 0.1) < 1e-12) if any(
        abs(b["eps"] - 0.1) < 1e-12 for b in top["band"]) else top["band"][-1]
    log10_cap = float(geo.log_cap_mass(0.5, top["d"])) / math.log(10)
    agree = [b["agrees"] for r in sphere["per_dim"] for b in r["band"]]
    conditions = {
        f"≥ {ALMOST_ALL:.0%} within |x₁| ≤ {band['eps']} (Monte Carlo, lower 99% bound)": band["ci"][0] >= ALMOST_ALL,
        # each 99% interval misses by chance 1% of the time: only a number of misses that a
        # binomial(n, 0.01) count makes implausible (p < 1e-3) is a real disagreement
        "Monte Carlo agrees with the exact band mass": misses_plausible(len(agree) - sum(agree), len(agree)),
    }
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=decide(conditions),
        rule="supported if all of: " + "; ".join(conditions),
        key=KeyNumber(f"share within |x₁| ≤ {band['eps']} in d={top['d']}", band["mc"], tuple(band["ci"]), 0.99),
        measured=(f"in d={top['d']}, {band['mc']:.4%} of {top['n_points']} sampled points lie within "
                  f"|x₁| ≤ {band['eps']} (exact {band['exact']:.6f}); the polar cap x₁ ≥ 0.5 holds "
                  f"10^{log10_cap:.1f} of the sphere."),
        baseline="the exact band law P(|x₁| ≤ ε) = I_{ε²}(½, (d−1)/2)",
        numbers={"conditions": conditions, "log10_cap": log10_cap, "band": band},
        construction=(f"The polar cap x₁ ≥ 0.5 holds 10^{log10_cap:.1f} < {EMPTY_CAP:g} of S^{top['d'] - 1}: the "
                      "exact law I_{1−t²}((d−1)/2, ½)/2, a theorem, not a measurement.",),
        caveat="A mathematical property of the uniform measure on the sphere; it holds unconditionally.",
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["sphere"])
