"""Claim 13: experts specialise by domain (math / language / code).

Chance is not the right null on its own: domains use different tokens, so even a router that
learned nothing sends their tokens to different experts, and the best of E experts × layers
exceeds chance by selection alone. The claim is therefore held against the same model with an
*untrained router* — the run's step-0 checkpoint for the lab's models, and for a user's
checkpoint the model with every router row replaced by a random direction of the same norm —
measured on the same text in the same way.
"""

from __future__ import annotations

from moescope.lab.claims._trained import layers
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Experts specialise by domain (math / language / code)"
LECTURE = "専門化: 各Expertが特定のタスク/ドメインに特化 (Expert 1: 数学, Expert 2: 言語, Expert 3: コード)"
# Chance-corrected specialisation (p − k/E)/(1 − k/E) (OLMoE §5): 0 is chance, 1 exclusive.
# A domain "has" an expert when some expert's specialisation for it reaches 0.2 in some layer;
# 0.1–0.2 is weak evidence.
STRONG, WEAK = 0.2, 0.1
# ... and when that best specialisation exceeds the untrained router's best for the domain by
# at least half the strong level: what token statistics and selection produce alone is not
# specialisation.
MARGIN = 0.1


def _best(lays: list[dict]) -> dict[str, float]:
    names = lays[0]["domains"]["names"]
    return {d: max(max(lay["domains"]["specialisation"][i]) for lay in lays) for i, d in enumerate(names)}


def evaluate(runs: dict, baseline: str = "top2", where: str = "held-out text") -> Verdict:
    """``runs[baseline]["routing"]["layers"]``: RoutingStats summaries by domain; optional
    ``runs[baseline]["routing_null"]`` ({"layers", "kind"}): the same with an untrained router;
    ``where``: the text and model."""
    run = runs[baseline]
    lays = layers(run)
    best = _best(lays)
    null = run.get("routing_null")
    null_best = _best(null["layers"]) if null else {d: 0.0 for d in best}
    excess = {d: best[d] - null_best[d] for d in best}
    strong = [d for d in best if best[d] >= STRONG and excess[d] >= MARGIN]
    weak = [d for d in best if best[d] >= WEAK and excess[d] >= MARGIN / 2]
    if len(strong) >= 2:
        verdict = "supported"
    elif strong or weak:
        verdict = "inconclusive"
    else:
        verdict = "not supported"
    null_text = (f"the same model with an untrained router ({null['kind']}): best per domain "
                 + ", ".join(f"{d} {v:.2f}" for d, v in null_best.items())) if null else \
        "no untrained-router measurement was available: held against chance only"
    return Verdict(
        claim_id=13, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule=f"supported if at least two domains have an expert with chance-corrected specialisation ≥ {STRONG} "
             f"and ≥ {MARGIN} above the untrained router's best for that domain; not supported if no domain "
             f"reaches {WEAK} with {MARGIN / 2} above it; inconclusive otherwise",
        key=KeyNumber("largest chance-corrected specialisation", max(best.values())),
        measured=f"best expert per domain on {where}: " + ", ".join(
            f"{d} {v:.2f} ({excess[d]:+.2f} over the untrained router)" for d, v in best.items())
            + f" (chance = 0; k/E = {lays[0]['domains']['chance']:.2f}).",
        baseline=f"chance routing (every domain sends k/E of its tokens to each expert) and {null_text}",
        numbers={"best": best, "untrained_best": null_best if null else None, "excess": excess},
        caveat="Domains differ in their tokens, so part of any specialisation is token identity; the untrained "
               "router measures how much of it arises without learning.",
        figures=("domain_specialisation.png",),
    )
