"""Claim 13: experts specialise by domain (math / language / code).

Measured as the normalised mutual information between a token's domain and the experts it is
routed to (:func:`moescope.stats.normalized_mutual_information`): zero when routing does not
depend on the domain — also under collapse, when every domain goes to the same experts (the old
"best expert per domain" score rewarded exactly that). Chance is not the null on its own: domains
use different tokens, so even a router that learned nothing routes them differently. The null is
the same trained model on the same text with every router row turned to a random direction of the
same norm (:mod:`moescope.analysis.router_null`, 20 draws) — one definition for the lab's models and
for ``moescope lab --model``.
"""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, layers, mean, null_matrix, null_shift, seeds
from moescope.lab.verdict import Verdict, judge, rule_text
from moescope.stats import Evidence

CLAIM = "Experts specialise by domain (math / language / code)"
LECTURE = "専門化: 各Expertが特定のタスク/ドメインに特化 (Expert 1: 数学, Expert 2: 言語, Expert 3: コード)"
ID = 13
NEEDS = ("training",)
FIGURES = ("domain_specialisation.png",)
# The trained router's domain–expert NMI must exceed the random routers' by 0.02 (a tenth of the
# ~0.2 that token identity alone gives a random router on the lab corpus).
MARGIN = 0.02


def evidence_for(reps: list[dict], key: str, name: str, *, margin: float, side: str, reference: float = 0.0
                 ) -> Evidence:
    """Trained − random-router ``key``: a t over seeds, or for one model the random routers' spread."""
    if len(reps) > 1:
        return Evidence(name, "t", [null_shift(r["router_null"], key) for r in reps], reference=reference,
                        margin=margin, side=side, unit="seed")
    obs, null = null_matrix(reps[0]["router_null"], key)
    return Evidence(name, "permutation_shift", obs, null=null, reference=reference, margin=margin, side=side,
                    unit="layer", note="one model: the interval is the spread of the random routers")


def evaluate(runs: dict, baseline: str = "top2", where: str = "held-out text") -> Verdict:
    """``runs[baseline]["router_null"]`` (and seeds): per layer ``nmi`` of the trained router and of the random
    routers; ``runs[baseline]["routing"]``: the full routing statistics (specialisation, for the text)."""
    reps = [r for r in seeds(runs, baseline) if r.get("router_null")]
    evidence = [evidence_for(reps, "nmi", "domain–expert NMI: trained − random-direction router", margin=MARGIN,
                             side="greater")]
    j = judge(evidence)
    a = j.assessments[0]
    nmi = mean(mean(x["nmi"] for x in r["router_null"]["observed"]) for r in reps)
    lays = layers(reps[0])
    names = lays[0]["domains"]["names"]
    best = {d: max(max(lay["domains"]["specialisation"][i]) for lay in lays) for i, d in enumerate(names)}
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"on {where}, the mutual information between domain and chosen experts is {nmi:.3f} of its "
                  f"maximum (layer mean), {a.effect:+.3f} {fmt_interval(a)} above random-direction routers on the "
                  f"same hidden states ({len(reps)} seed{'s' * (len(reps) != 1)}, "
                  f"{len(reps[0]['router_null']['null'])} random routers each). Best chance-corrected "
                  f"specialisation per domain (seed 0): " + ", ".join(f"{d} {v:.2f}" for d, v in best.items()) + "."),
        baseline=reps[0]["router_null"]["kind"],
        numbers={"nmi": [[x["nmi"] for x in r["router_null"]["observed"]] for r in reps], "best": best},
        evidence=j.evidence,
        caveat="Domains differ in their tokens, so part of any domain–expert dependence is token identity; the "
               "random-direction routers measure how much of it arises without a learned router.",
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["training"]["runs"])


def from_checkpoint(data: dict) -> Verdict:
    t = data["checkpoint"]
    return evaluate(t["runs"], t["baseline"], where=f"the lab corpus routed through {t['where']}")
