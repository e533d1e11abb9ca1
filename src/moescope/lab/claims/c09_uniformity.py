"""Claim 9: load balancing spreads routing evenly over the sphere."""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, layers, mean, paired
from moescope.lab.verdict import Verdict, judge, rule_text
from moescope.stats import Evidence

CLAIM = "Load balancing spreads routing evenly over the sphere"
LECTURE = "Load Balancing Loss の幾何学: 球面上の均等分布を促す正則化"
ID = 9
NEEDS = ("training",)
FIGURES = ("balance_load.png",)
# Both readings must move by more than the seed-to-seed noise of a tiny model: 0.02 of normalised load
# entropy (0 = one expert, 1 = uniform), and 0.02 of the centroids' mean resultant length (uniform
# directions: ~1/√E = 0.35 for 8 experts).
ENTROPY_MARGIN = 0.02
RESULTANT_MARGIN = 0.02


def _entropy(run: dict) -> float:
    return mean(x["load_entropy"] for x in layers(run))


def _resultant(run: dict) -> float:
    return mean(g["router"]["resultant_length"] for g in run["weights"])


def evaluate(runs: dict) -> Verdict:
    pairs = paired(runs, "top2", "top2-alpha0")
    method, unit = "t", "seed"
    evidence = [
        Evidence("load entropy with − without balancing (same seed)", method,
                 [_entropy(a) - _entropy(b) for a, b in pairs], reference=0.0, margin=ENTROPY_MARGIN,
                 side="greater", unit=unit),
        Evidence("centroids' mean resultant length without − with balancing", method,
                 [_resultant(b) - _resultant(a) for a, b in pairs], reference=0.0, margin=RESULTANT_MARGIN,
                 side="greater", unit=unit),
    ]
    j = judge(evidence)
    ent, res = j.assessments
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"over {len(pairs)} same-seed pairs, balancing raises the normalised load entropy by "
                  f"{ent.effect:+.3f} {fmt_interval(ent)} (to {mean(_entropy(a) for a, _ in pairs):.3f}) and "
                  f"shortens the centroids' mean unit vector by {res.effect:+.3f} {fmt_interval(res)} (to "
                  f"{mean(_resultant(a) for a, _ in pairs):.3f}; uniform directions: ≈ 1/√E)."),
        baseline="the α = 0 run of the same seed; for centroids, uniform directions on the sphere",
        numbers={"entropy_with": [_entropy(a) for a, _ in pairs], "entropy_without": [_entropy(b) for _, b in pairs],
                 "resultant_with": [_resultant(a) for a, _ in pairs],
                 "resultant_without": [_resultant(b) for _, b in pairs]},
        evidence=j.evidence,
        figures=FIGURES,
    )


NEEDS_TRAINING = "runs with and without the balance loss"


def from_lab(data: dict) -> Verdict:
    return evaluate(data["training"]["runs"])
