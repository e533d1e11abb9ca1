"""Claim 2: random points are almost equidistant (Beyer et al. 1999's loss of contrast)."""

from __future__ import annotations

import numpy as np

from moescope.lab.verdict import KeyNumber, Verdict, decide

CLAIM = "Random points are almost equidistant in high dimension"
LECTURE = "高次元では「ほぼ直交」「ほぼ等距離」"
ID = 2
NEEDS = ("sphere",)
FIGURES = ("distance_contrast.png",)
# The contrast must shrink like d^(-1/2) (the exact distance law's spread): slope in [-0.6, -0.4],
# fitted over d >= 100 where that asymptotic law applies (between d = 10 and 100 the exact law's
# own prediction still falls faster, about as d^-0.6).
SLOPE_RANGE = (-0.6, -0.4)
ASYMPTOTIC_FROM = 100
# The measured medians must match the exact distance law's plug-in prediction within 25%.
PREDICTION_TOLERANCE = 0.25
# "Almost equidistant": the farthest of n points is within 10% of the nearest at the top d.
EQUIDISTANT_CONTRAST = 0.1


def evaluate(sphere: dict) -> Verdict:
    per = [r for r in sphere["per_dim"] if r["d"] >= 10]
    med = np.array([r["contrast"]["median"] for r in per])
    tail = [r for r in per if r["d"] >= ASYMPTOTIC_FROM]
    d = np.array([r["d"] for r in tail], dtype=float)
    tail_med = np.array([r["contrast"]["median"] for r in tail])
    slope = float(np.polyfit(np.log(d), np.log(tail_med), 1)[0]) if len(d) > 1 else float("nan")
    top = sphere["per_dim"][-1]
    conditions = {
        "contrast falls monotonically with d": bool(np.all(np.diff(med) < 0)) and len(med) > 1,
        f"it falls like d^(-1/2) for d ≥ {ASYMPTOTIC_FROM}": SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1],
        "it matches the exact distance law's prediction": all(
            abs(r["contrast"]["median"] / r["contrast"]["prediction"] - 1) <= PREDICTION_TOLERANCE
            for r in per),
        "contrast below 0.1 at the largest d": top["contrast"]["median"] < EQUIDISTANT_CONTRAST,
    }
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=decide(conditions),
        rule="supported if all of: " + "; ".join(conditions) + f" (slope range {SLOPE_RANGE})",
        key=KeyNumber(f"median relative contrast in d={top['d']}", top["contrast"]["median"],
                      tuple(top["contrast"]["median_ci95"]), 0.95),
        measured=(f"the median relative contrast (D_max − D_min)/D_min of {top['contrast']['n_points']} points "
                  f"falls as d^{slope:.3f} for d ≥ {ASYMPTOTIC_FROM}, to {top['contrast']['median']:.3g} "
                  f"in d={top['d']}."),
        baseline="plug-in prediction from the exact distance law ||x − y||²/4 ~ Beta((d−1)/2, (d−1)/2)",
        numbers={"slope": slope, "conditions": conditions,
                 "median": {r["d"]: r["contrast"]["median"] for r in sphere["per_dim"]},
                 "prediction": {r["d"]: r["contrast"]["prediction"] for r in sphere["per_dim"]}},
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["sphere"])
