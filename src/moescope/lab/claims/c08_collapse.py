"""Claim 8: without load balancing experts collapse; α·n·Σ f_i·p_i prevents it."""

from __future__ import annotations

from moescope.lab.claims._trained import effective_experts, layers, mean, seeds
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Without load balancing experts collapse; the balance loss α·n·Σ f_i·p_i prevents it"
LECTURE = "Expert Collapse: 一部のExpertに負荷が集中 … 対策：Load Balancing Loss … 次元崩壊の変種"


def evaluate(runs: dict) -> Verdict:
    with_b, without = seeds(runs, "top2"), seeds(runs, "top2-alpha0")
    pairs = list(zip(with_b, without, strict=False))
    cv_b = [mean(lay["load_cv"] for lay in layers(r)) for r in with_b]
    cv_0 = [mean(lay["load_cv"] for lay in layers(r)) for r in without]
    eff_b = [mean(effective_experts(lay) for lay in layers(r)) for r in with_b]
    eff_0 = [mean(effective_experts(lay) for lay in layers(r)) for r in without]
    dead_0 = [sum(len(lay["dead_experts"]) for lay in layers(r)) for r in without]
    pr_b = [mean(g["router"]["participation_ratio"] for g in r["weights"]) for r in with_b]
    pr_0 = [mean(g["router"]["participation_ratio"] for g in r["weights"]) for r in without]
    wins = [layers(a) and mean(x["load_cv"] for x in layers(b)) > mean(x["load_cv"] for x in layers(a))
            for a, b in pairs]
    verdict = "supported" if all(wins) else ("not supported" if not any(wins) else "inconclusive")
    return Verdict(
        claim_id=8, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule="supported if, for every seed, the load CV without the balance loss (α = 0) exceeds the CV with it; "
             "not supported if it never does; inconclusive when seeds disagree",
        key=KeyNumber("load CV, α = 0 / α > 0", mean(cv_0) / max(mean(cv_b), 1e-12)),
        measured=(f"load CV (layer mean) {mean(cv_0):.3f} without vs {mean(cv_b):.3f} with the balance loss over "
                  f"{len(pairs)} seed(s); experts effectively used {mean(eff_0):.2f} vs {mean(eff_b):.2f} of "
                  f"{len(layers(with_b[0])[0]['load'])}; dead experts without balancing: {dead_0}; participation "
                  f"ratio of the router centroids {mean(pr_0):.2f} vs {mean(pr_b):.2f} (the geometric reading: "
                  f"a lower ratio is a collapse of the centroids' span)."),
        baseline="the same model and data trained with α = 0.01 (Switch convention, 1 at perfect balance)",
        numbers={"cv_with": cv_b, "cv_without": cv_0, "effective_with": eff_b, "effective_without": eff_0,
                 "dead_without": dead_0, "participation_with": pr_b, "participation_without": pr_0},
        figures=("balance_load.png",),
    )
