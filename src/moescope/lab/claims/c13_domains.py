"""Claim 13: experts specialise by domain (math / language / code)."""

from __future__ import annotations

from moescope.lab.claims._trained import layers
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Experts specialise by domain (math / language / code)"
LECTURE = "専門化: 各Expertが特定のタスク/ドメインに特化 (Expert 1: 数学, Expert 2: 言語, Expert 3: コード)"
# Chance-corrected specialisation (p − k/E)/(1 − k/E) (OLMoE §5): 0 is chance, 1 exclusive.
# A domain "has" an expert when some expert's specialisation for it reaches 0.2 in some layer;
# 0.1–0.2 is weak evidence.
STRONG, WEAK = 0.2, 0.1


def evaluate(runs: dict, baseline: str = "top2", where: str = "held-out text") -> Verdict:
    """``runs[baseline]["routing"]["layers"]``: RoutingStats summaries by domain; ``where``: the text and model."""
    lays = layers(runs[baseline])
    names = lays[0]["domains"]["names"]
    best = {d: max(max(lay["domains"]["specialisation"][i]) for lay in lays) for i, d in enumerate(names)}
    strong = [d for d, v in best.items() if v >= STRONG]
    weak = [d for d, v in best.items() if WEAK <= v < STRONG]
    if len(strong) >= 2:
        verdict = "supported"
    elif strong or weak:
        verdict = "inconclusive"
    else:
        verdict = "not supported"
    return Verdict(
        claim_id=13, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule=f"supported if at least two domains have an expert with chance-corrected specialisation ≥ {STRONG}; "
             f"not supported if none reaches {WEAK}; inconclusive otherwise",
        key=KeyNumber("largest chance-corrected specialisation", max(best.values())),
        measured=f"best expert per domain on {where}: " + ", ".join(
            f"{d} {v:.2f}" for d, v in best.items()) + f" (chance = 0; k/E = {lays[0]['domains']['chance']:.2f}).",
        baseline="chance routing: every domain sends k/E of its tokens to each expert",
        numbers={"best": best},
        figures=("domain_specialisation.png",),
    )
