"""Claim 6 (hypothesis): experts take near-orthogonal subspaces.

Measured against a *data-matched* null (:mod:`moescope.analysis.expert_null`): the layer's own
hidden units dealt into E random groups of the same size, the same rank r. Any trained FFN
overlaps more than Haar-random subspaces (training aligns every neuron with the high-variance
directions of its input), so the isotropic null is reported but decides only the absolute
reading, and only where exact orthogonality is feasible at all (E·r <= H).
"""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, mean, seeds
from moescope.lab.verdict import KeyNumber, Verdict, judge, rule_text
from moescope.stats import Evidence

CLAIM = "Experts take near-orthogonal subspaces (the lecture's hypothesis)"
LECTURE = "良いMoEの仮説: 各Expertが担当する部分空間は、互いにほぼ直交している"
ID = 6
NEEDS = ("training",)
FIGURES = ("expert_overlap.png",)
# Relative reading: the experts' mean overlap must be at least 5% below that of random groupings of
# the same hidden units: a smaller separation is within what one regrouping differs from another (the null's
# own spread, ~1%) and would not be "near-orthogonal" in any useful sense.
RELATIVE_MARGIN = 0.05
# Absolute reading (only where E·r <= H), against Haar-random subspaces: supported when the overlap is
# wholly below 0.75× theirs (clearly more orthogonal than random subspaces), not supported when wholly above
# 1.25× (clearly less); in between, random-like, it cannot tell.
ABSOLUTE_MARGIN = 0.25


def _relative(nulls: list[list[dict]]) -> Evidence:
    """One Evidence from per-run lists of per-layer grouping nulls (t over seeds, or the permutation spread)."""
    name = "mean overlap / random regroupings of the same hidden units"
    if len(nulls) == 1:
        lays = nulls[0]
        return Evidence(name, "permutation_ratio", [x["observed"] for x in lays], reference=1.0,
                        margin=RELATIVE_MARGIN, side="less", null=[x["null"] for x in lays], unit="layer",
                        note="one model: the interval is the spread of single random regroupings")
    return Evidence(name, "t", [mean(x["ratio"] for x in lays) for lays in nulls], reference=1.0,
                    margin=RELATIVE_MARGIN, side="less", unit="seed")


def _absolute(nulls: list[list[dict]]) -> Evidence:
    name = "mean overlap / Haar-random subspaces (feasible layers)"
    values = [mean(x["ratio_to_isotropic"] for x in lays) for lays in nulls]
    if len(values) == 1:  # one given model: its overlap is a property of its weights, not a sample
        return Evidence(name, "exact", values, reference=1.0, margin=ABSOLUTE_MARGIN, side="less",
                        note="one model: the overlap of its weights, no sampling")
    return Evidence(name, "t", values, reference=1.0, margin=ABSOLUTE_MARGIN, side="less", unit="seed")


def evaluate(runs: dict, baseline: str = "top2", where: str | None = None, control: str = "dense-total") -> Verdict:
    """``runs[name]["expert_null"]``: per MoE layer :func:`~moescope.analysis.expert_null.grouping_null`,
    for the baseline and its seeds; ``runs[control]["expert_null"]``: a dense FFN split into random groups."""
    reps = seeds(runs, baseline)
    nulls = [r["expert_null"] for r in reps]
    where = where or f"the trained top-2 model ({len(reps)} seed{'s' * (len(reps) != 1)})"
    skipped = [x["skipped"] for lays in nulls for x in lays if "skipped" in x]
    if skipped:
        lays = list(nulls[0])
        return Verdict(
            claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict="inconclusive",
            rule="needs the permutation null of the experts' hidden units",
            key=KeyNumber("experts compared", 0.0),
            measured=f"in {where}, the permutation null could not be computed: {skipped[0]}.",
            baseline="random regroupings of the layer's hidden units", numbers={"expert_null": lays},
            figures=FIGURES)
    feasible = all(x["feasible"] for lays in nulls for x in lays)
    evidence = [_relative(nulls)] + ([_absolute(nulls)] if feasible else [])
    j = judge(evidence)
    rel = j.assessments[0]
    first = nulls[0]
    ctrl = runs.get(control, {}).get("expert_null")
    ctrl_text = (f" Control: the {control} run's dense FFN dealt into {ctrl[0]['num_experts']} random groups gives "
                 f"{', '.join(format(x['ratio'], '.3f') for x in ctrl)} of its own permutation null per layer."
                 if ctrl else "")
    iso = ", ".join(f"{x['ratio_to_isotropic']:.2f}×" for x in first)
    per_layer = ", ".join(f"{x['ratio']:.3f} (p = {x['p_less']:.3f})" for x in first)
    feas_text = ("" if feasible else
                 f" Exact orthogonality is infeasible here (E·r = {first[0]['num_experts']}×{first[0]['rank']} > "
                 f"H = {first[0]['hidden']}: the least possible mean overlap is "
                 f"{first[0]['feasible_min'] / first[0]['isotropic_null']:.2f}× the Haar null), so only the relative "
                 f"reading decides.")
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"in {where}, the experts' mean Σcos² between input subspaces (rank "
                  f"{', '.join(str(x['rank']) for x in first)} of H = {first[0]['hidden']}) is {rel.effect:.3f}× "
                  f"that of random regroupings of the same hidden units {fmt_interval(rel)}; per layer (seed 0) "
                  f"{per_layer}; against Haar-random subspaces {iso}.{feas_text}{ctrl_text}"),
        baseline=("random regroupings of the layer's own hidden units (same group sizes, same rank, "
                  f"{first[0]['draws']} draws); the Haar-random-subspace null r²/H and the feasible minimum beside it"),
        numbers={"ratio_by_seed": [[x["ratio"] for x in lays] for lays in nulls],
                 "ratio_to_isotropic_by_seed": [[x["ratio_to_isotropic"] for x in lays] for lays in nulls],
                 "p_less": [x["p_less"] for x in first], "feasible": feasible,
                 "feasible_min_ratio": [x["feasible_min"] / x["isotropic_null"] for x in first],
                 "control": [x["ratio"] for x in ctrl] if ctrl else None},
        evidence=j.evidence,
        caveat="The lecture calls orthogonal expert subspaces an idealised hypothesis. A ratio below 1 says the "
               "experts are more separated than chance groupings of their own neurons, not that they are orthogonal.",
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["training"]["runs"])


def from_checkpoint(data: dict) -> Verdict:
    t = data["checkpoint"]
    return evaluate(t["runs"], t["baseline"], where=t["where"])
