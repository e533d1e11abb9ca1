"""Claim 8: without load balancing experts collapse; α·n·Σ f_i·p_i prevents it."""

from __future__ import annotations

from moescope.lab.claims._trained import effective_experts, fmt_interval, layers, mean, paired
from moescope.lab.verdict import Verdict, judge, rule_text
from moescope.stats import Evidence

CLAIM = "Without load balancing experts collapse; the balance loss α·n·Σ f_i·p_i prevents it"
LECTURE = "Expert Collapse: 一部のExpertに負荷が集中 … 対策：Load Balancing Loss … 次元崩壊の変種"
ID = 8
NEEDS = ("training",)
FIGURES = ("balance_load.png",)
# Dropping the balance loss must raise the load's coefficient of variation by more than 0.1 (same-seed
# pairs; a balanced 8-expert layer sits at CV ~0.1-0.3, so 0.1 is the least change that reads as imbalance).
# A difference, not a ratio: a ratio of two near-zero CVs would be noise.
MARGIN = 0.1


def _cv(run: dict) -> float:
    return mean(lay["load_cv"] for lay in layers(run))


def evaluate(runs: dict) -> Verdict:
    pairs = paired(runs, "top2", "top2-alpha0")
    diffs = [_cv(b) - _cv(a) for a, b in pairs]
    evidence = [Evidence("load CV without − with the balance loss (same seed)", "t", diffs, reference=0.0,
                         margin=MARGIN, side="greater", unit="seed")]
    j = judge(evidence)
    a = j.assessments[0]
    with_b, without = [p[0] for p in pairs], [p[1] for p in pairs]
    eff_b = [mean(effective_experts(lay) for lay in layers(r)) for r in with_b]
    eff_0 = [mean(effective_experts(lay) for lay in layers(r)) for r in without]
    dead_0 = [sum(len(lay["dead_experts"]) for lay in layers(r)) for r in without]
    pr_b = [mean(g["router"]["participation_ratio"] for g in r["weights"]) for r in with_b]
    pr_0 = [mean(g["router"]["participation_ratio"] for g in r["weights"]) for r in without]
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"over {len(pairs)} same-seed pairs, the load CV (layer mean) is {a.effect:+.3f} higher without "
                  f"the balance loss {fmt_interval(a)} ({mean(_cv(r) for r in without):.3f} vs "
                  f"{mean(_cv(r) for r in with_b):.3f}); experts effectively used {mean(eff_0):.2f} vs "
                  f"{mean(eff_b):.2f} of {len(layers(with_b[0])[0]['load'])}; dead experts without balancing: "
                  f"{dead_0}; participation ratio of the router centroids {mean(pr_0):.2f} vs {mean(pr_b):.2f} "
                  f"(the geometric reading: a lower ratio is a collapse of the centroids' span)."),
        baseline="the same model, data and seed trained with α = 0.01 (Switch convention, 1 at perfect balance)",
        numbers={"cv_with": [_cv(r) for r in with_b], "cv_without": [_cv(r) for r in without],
                 "effective_with": eff_b, "effective_without": eff_0, "dead_without": dead_0,
                 "participation_with": pr_b, "participation_without": pr_0},
        evidence=j.evidence,
        figures=FIGURES,
    )


NEEDS_TRAINING = "runs with and without the balance loss"


def from_lab(data: dict) -> Verdict:
    return evaluate(data["training"]["runs"])
