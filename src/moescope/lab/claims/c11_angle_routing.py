"""Claim 11: routing picks a subspace by the angle (or inner product) with expert centroids.

A linear router's logit *is* the inner product x·c_e = ||x||·||c_e||·cos θ, so "by inner product"
holds by construction. The empirical question is whether the *angle* decides: how often top-1 of
cos(x, c_e) reproduces the router's top-1 of x·c_e. Chance (1/E) is the wrong null — with rows of
similar norm the angle decides almost every choice of any router — so the null is the same model
with every router row turned to a random direction of the same norm: the agreement the norms alone
allow. (With rows of equal norm the agreement is 1 by construction, so an untrained router cannot
be the evidence.) The claim holds if training made the angle decide more of the choices than that
null does (by 2 points), and a router built on the angle alone (cosine router) trains to within
0.02 nats of the dot-product router's loss.
"""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, mean, null_matrix, null_shift, paired, seeds
from moescope.lab.verdict import Verdict, judge, rule_text
from moescope.stats import Evidence

CLAIM = "Routing picks an expert by the angle (or inner product) between token and expert centroid"
LECTURE = "入力ベクトルと各Expert重心の角度（または内積）で決定されることが多い"
ID = 11
NEEDS = ("training",)
FIGURES = ("angle_agreement.png",)
# Training must make the angle reproduce 2 points more first choices than random directions with the
# trained norms do (2 of every 100 choices: less is not a router that "decides by angle" more) ...
AGREEMENT_MARGIN = 0.02
# ... and a cosine router must train to within 0.02 nats of the dot-product router's validation loss
# (the loss difference claims 5 and 15 count as real).
MAX_LOSS_GAP = 0.02


def evaluate(runs: dict, baseline: str = "top2", cosine: str | None = "cosine-top2",
             where: str = "the trained dot-product router") -> Verdict:
    """``runs[baseline]["router_null"]`` (and seeds): per layer ``angle_top1`` of the trained router and of the
    random-direction routers; ``runs[cosine]`` (and seeds): the cosine-router runs. Without a cosine-router
    run (a given checkpoint cannot be retrained) only the angle condition is measured, and the verdict says so."""
    reps = [r for r in seeds(runs, baseline) if r.get("router_null")]
    name = "angle agreement: trained − random-direction router of the same norms"
    if len(reps) > 1:
        ev = Evidence(name, "t", [null_shift(r["router_null"], "angle_top1") for r in reps],
                      reference=0.0, margin=AGREEMENT_MARGIN, side="greater", unit="seed")
    else:
        obs, null = null_matrix(reps[0]["router_null"], "angle_top1")
        ev = Evidence(name, "permutation_shift", obs, null=null, reference=0.0, margin=AGREEMENT_MARGIN,
                      side="greater", unit="layer", note="one model: the interval is the spread of the random routers")
    evidence = [ev]
    pairs = paired(runs, baseline, cosine) if cosine else []
    if pairs:
        gaps = [c["val_loss"] - b["val_loss"] for b, c in pairs]
        evidence.append(Evidence("validation loss, cosine router − dot-product router (same seed)",
                                 "t", gaps, reference=MAX_LOSS_GAP, margin=0.0,
                                 side="less", unit="seed"))
    j = judge(evidence)
    a = j.assessments[0]
    agree = mean(mean(x["angle_top1"] for x in r["router_null"]["observed"]) for r in reps)
    null_agree = mean(mean(mean(d[i]["angle_top1"] for d in r["router_null"]["null"])
                           for i in range(len(r["router_null"]["observed"]))) for r in reps)
    loss = ""
    if len(j.assessments) > 1:
        g = j.assessments[1]
        loss = (f"; the cosine router's validation loss is {mean(c['val_loss'] for _, c in pairs):.3f} vs "
                f"{mean(b['val_loss'] for b, _ in pairs):.3f} ({g.effect:+.3f} nats {fmt_interval(g)})")
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"dropping the norms (cos instead of x·c) keeps {agree:.1%} of the first choices of {where}, "
                  f"against {null_agree:.1%} for random-direction routers with the same norms (difference "
                  f"{a.effect:+.3f} {fmt_interval(a)}){loss}."),
        baseline="the same model with every router row turned to a random direction of the same norm"
                 + ("; the dot-product router's loss at the same seed" if pairs else ""),
        numbers={"agreement": agree, "null_agreement": null_agree},
        evidence=j.evidence,
        construction=("A linear router's logit is x·c_e = ||x||·||c_e||·cos θ: routing by inner product is the "
                      "router's definition.",),
        caveat="" if pairs else ("Measured on a given checkpoint: the second half of the test, training the same "
                                 "model with a cosine router, needs the lab's own training runs."),
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["training"]["runs"])


def from_checkpoint(data: dict) -> Verdict:
    t = data["checkpoint"]
    return evaluate(t["runs"], t["baseline"], cosine=None, where=f"the router of {t['where']}")
