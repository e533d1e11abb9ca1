"""Claim 14: router output as a heatmap shows activation patterns."""

from __future__ import annotations

from moescope.lab.claims._trained import layers, mean
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "The router's output, drawn as a heatmap, shows activation patterns"
LECTURE = "Expert活性化パターンの可視化：ルーター出力をヒートマップ化"
# A "pattern" is structure a uniform router would not show: consecutive tokens keep their first
# expert at least 1.5x as often as uniform routing (1/E) would, or the per-token router
# entropy sits clearly below uniform (< 0.9 of log E).
REPEAT_FACTOR = 1.5
MAX_ENTROPY = 0.9


def evaluate(runs: dict, baseline: str = "top2", where: str = "") -> Verdict:
    """``runs[baseline]["routing"]["layers"]``: RoutingStats summaries; ``where`` names the model."""
    lays = layers(runs[baseline])
    rep = mean(x["repetition"]["first"] / x["repetition"]["uniform_first"] for x in lays)
    ent = mean(x["router_entropy"] for x in lays)
    conditions = {f"first-choice repetition ≥ {REPEAT_FACTOR}× uniform": rep >= REPEAT_FACTOR,
                  f"router entropy < {MAX_ENTROPY} of uniform": ent < MAX_ENTROPY}
    null = runs[baseline].get("routing_null")
    null_rep = mean(x["repetition"]["first"] / x["repetition"]["uniform_first"] for x in null["layers"]) \
        if null else None
    held = sum(conditions.values())
    verdict = "supported" if held == 2 else ("not supported" if held == 0 else "inconclusive")
    return Verdict(
        claim_id=14, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule="supported if both: " + "; ".join(conditions),
        key=KeyNumber("first-choice repetition / uniform", rep),
        measured=(f"{where and 'in ' + where + ', '}consecutive tokens share their first expert {rep:.2f}× as often "
                  f"as uniform routing would; the "
                  f"per-token router entropy is {ent:.2f} of its maximum (layer means)"
                  + (f"; with an untrained router the repetition is {null_rep:.2f}× uniform." if null else ".")),
        baseline="a uniform router: repetition 1/E, entropy log E (Mixtral paper, Table 5)",
        numbers={"conditions": conditions, "repetition_over_uniform": rep, "router_entropy": ent,
                 "untrained_repetition_over_uniform": null_rep},
        caveat="A pattern is any structure a uniform router lacks; part of it comes from the tokens themselves "
               "(an untrained router repeats experts on repeated or similar tokens too), which the measured "
               "sentence quotes where it was measured.",
        figures=("router_heatmaps.png",),
    )
