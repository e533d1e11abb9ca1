"""Claim 14: router output as a heatmap shows activation patterns.

A "pattern" is structure a router that learned nothing would not show. Uniform routing (1/E) is
not that null: the hidden states carry the tokens, so even random router directions repeat experts
on repeated or similar tokens. The null is the trained model with random-direction router rows of the
same norms (:mod:`moescope.analysis.router_null`), on the same text; the rule reads it.
"""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, mean, seeds
from moescope.lab.claims.c13_domains import evidence_for
from moescope.lab.verdict import Verdict, judge, rule_text

CLAIM = "The router's output, drawn as a heatmap, shows activation patterns"
LECTURE = "Expert活性化パターンの可視化：ルーター出力をヒートマップ化"
ID = 14
NEEDS = ("training",)
FIGURES = ("router_heatmaps.png",)
# Consecutive tokens must keep their first expert more often than under the random routers, by a
# quarter of the uniform rate 1/E. (The router entropy is reported, not decisive: random rows with the
# trained norms are as sharp as the trained router whenever the norms are large, so it measures the
# norms, not a pattern.)
REPEAT_MARGIN = 0.25


def evaluate(runs: dict, baseline: str = "top2", where: str = "") -> Verdict:
    """``runs[baseline]["router_null"]`` (and seeds): per layer ``repetition`` (first-choice repetition / uniform)
    and ``router_entropy`` of the trained router and of the random routers."""
    reps = [r for r in seeds(runs, baseline) if r.get("router_null")]
    evidence = [evidence_for(reps, "repetition", "first-choice repetition / uniform: trained − random router",
                             margin=REPEAT_MARGIN, side="greater")]
    j = judge(evidence)
    (rep,) = j.assessments

    def avg(key: str, null: bool) -> float:
        if null:
            return mean(mean(mean(d[i][key] for d in r["router_null"]["null"])
                             for i in range(len(r["router_null"]["observed"]))) for r in reps)
        return mean(mean(x[key] for x in r["router_null"]["observed"]) for r in reps)

    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"{where and 'in ' + where + ', '}consecutive tokens share their first expert "
                  f"{avg('repetition', False):.2f}× as often as uniform routing would, against "
                  f"{avg('repetition', True):.2f}× with random-direction routers ({rep.effect:+.2f} "
                  f"{fmt_interval(rep)}); the per-token router entropy is {avg('router_entropy', False):.3f} of its "
                  f"maximum against {avg('router_entropy', True):.3f} with the random routers."),
        baseline=reps[0]["router_null"]["kind"] + "; uniform routing (repetition 1/E, entropy log E) for scale",
        numbers={"repetition": [[x["repetition"] for x in r["router_null"]["observed"]] for r in reps],
                 "router_entropy": [[x["router_entropy"] for x in r["router_null"]["observed"]] for r in reps]},
        evidence=j.evidence,
        caveat="Part of any pattern comes from the tokens themselves; the random-direction routers show how much.",
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["training"]["runs"])


def from_checkpoint(data: dict) -> Verdict:
    t = data["checkpoint"]
    return evaluate(t["runs"], t["baseline"], where=t["where"])
