"""Claim 10: a shared expert holds the common subspace.

A paired test at equal n: for every routed expert e, its overlap with the shared expert against its
mean overlap with the other routed experts, each as a ratio to its own Haar null (r_s·r/H and r²/H:
the ranks differ, so raw overlaps do not compare). If the shared expert holds what all routed
experts have in common, it overlaps each of them more than they overlap one another. The lab also
trains the same fine-grained model without shared experts (its 2 shared experts become 2 more
routed ones: equal active and total parameters): if the shared expert takes the common subspace off
the routed experts' hands, they overlap less (relative to random regroupings of their own hidden
units) with it than without it.
"""

from __future__ import annotations

import numpy as np

from moescope.lab.claims._trained import fmt_interval, mean, paired, seeds
from moescope.lab.verdict import KeyNumber, Verdict, judge, rule_text
from moescope.stats import Evidence

CLAIM = "A shared expert holds the common subspace"
LECTURE = "Shared Expert … 共通部分空間 + 専門部分空間の階層構造"
ID = 10
NEEDS = ("training",)
FIGURES = ("expert_overlap.png",)
# The shared-vs-routed overlap must exceed the routed-vs-routed overlap by 0.1 of their Haar nulls.
MARGIN = 0.1
# Ablation: without shared experts the routed experts' permutation-relative overlap must be 0.02 higher.
ABLATION_MARGIN = 0.02


def paired_overlaps(geo: list[dict]) -> tuple[list[float], list[float]]:
    """Per (layer, routed expert): overlap with the shared expert(s) and mean overlap with the other routed
    experts, each divided by its Haar null. Needs the E×E ``mean_cos2`` matrix of :func:`view_geometry`."""
    a, b = [], []
    for g in geo:
        h, r = g["hidden"], g["experts"]["rank"]
        m = np.array(g["experts"]["mean_cos2"], dtype=float) * h / r           # Σcos² / (r²/H)
        e = m.shape[0]
        off = ~np.eye(e, dtype=bool)
        routed = np.where(off, m, 0.0).sum(1) / (e - 1)
        shared = np.mean([np.array(s["mean_cos2"], dtype=float) * min(r, s["rank"]) * h / (r * s["rank"])
                          for s in g["shared"]], axis=0)
        a += shared.tolist()
        b += routed.tolist()
    return a, b


def _not_applicable(geo: list[dict], where: str, rule: str) -> Verdict:
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict="inconclusive", rule=rule,
        key=KeyNumber("shared experts in the MoE layers", 0.0),
        measured=f"{where} has no shared expert in any of its {len(geo)} MoE layer(s): nothing to measure.",
        baseline="overlap among the routed experts of the same layers",
        numbers={"not_applicable": "no shared expert"},
        caveat="Not applicable to this model: the claim is about models with a shared expert "
               "(DeepSeek-MoE, Qwen2-MoE, Llama 4, ...).",
        figures=FIGURES)


def evaluate(runs: dict, name: str = "deepseek-moe", where: str | None = None,
             ablation: str = "deepseek-moe-noshared") -> Verdict:
    """``runs[name]["weights"]``: per MoE layer view_geometry with its ``shared`` experts (and seeds);
    ``runs[ablation]``: the same model without shared experts (optional), each with ``expert_null``."""
    reps = seeds(runs, name)
    where = where or f"the DeepSeek-style run ({len(reps)} seed{'s' * (len(reps) != 1)})"
    if not any(g["shared"] for g in reps[0]["weights"]):
        return _not_applicable(reps[0]["weights"], where, "needs a model with a shared expert")
    per = [paired_overlaps(r["weights"]) for r in reps]
    if len(per) > 1:
        ev = Evidence("shared-vs-routed − routed-vs-routed overlap (each / its Haar null)", "t",
                      [mean(np.subtract(a, b)) for a, b in per], reference=0.0, margin=MARGIN, side="greater",
                      unit="seed")
    else:
        ev = Evidence("shared-vs-routed − routed-vs-routed overlap (each / its Haar null)", "paired_t",
                      per[0][0], against=per[0][1], reference=0.0, margin=MARGIN, side="greater",
                      unit="routed expert")
    evidence = [ev]
    pairs = [(s, n) for s, n in paired(runs, name, ablation) if s.get("expert_null") and n.get("expert_null")]
    if pairs:
        diffs = [mean(x["ratio"] for x in n["expert_null"]) - mean(x["ratio"] for x in s["expert_null"])
                 for s, n in pairs]
        evidence.append(Evidence("routed overlap / random regroupings: without − with shared experts",
                                 "t", diffs, reference=0.0, margin=ABLATION_MARGIN,
                                 side="greater", unit="seed"))
    j = judge(evidence)
    a = j.assessments[0]
    shared_mean = mean(mean(x[0]) for x in per)
    routed_mean = mean(mean(x[1]) for x in per)
    abl = ""
    if len(j.assessments) > 1:
        b = j.assessments[1]
        abl = (f" Without shared experts (equal active and total parameters) the routed experts' overlap relative "
               f"to random regroupings changes by {b.effect:+.3f} {fmt_interval(b)}; validation loss "
               f"{mean(n['val_loss'] for _, n in pairs):.3f} vs {mean(s['val_loss'] for s, _ in pairs):.3f} with them.")
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"in {where}, each routed expert overlaps the shared expert {shared_mean:.2f}× the Haar null "
                  f"and the other routed experts {routed_mean:.2f}× theirs: paired difference {a.effect:+.3f} "
                  f"{fmt_interval(a)}.{abl}"),
        baseline="per routed expert, its own mean overlap with the other routed experts (paired, equal n), each "
                 "against its Haar null; and the same model trained without shared experts",
        numbers={"shared_ratio": [x[0] for x in per], "routed_ratio": [x[1] for x in per]},
        evidence=j.evidence,
        caveat="" if len(evidence) > 1 else "No run without shared experts was available: only the geometry of the "
                                              "model with them is tested.",
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["training"]["runs"])


def from_checkpoint(data: dict) -> Verdict:
    t = data["checkpoint"]
    return evaluate(t["runs"], t["shared_run"], where=t["where"])
