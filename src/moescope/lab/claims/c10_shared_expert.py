"""Claim 10: a shared expert holds the common subspace."""

from __future__ import annotations

from moescope.lab.claims._trained import mean
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "A shared expert holds the common subspace"
LECTURE = "Shared Expert … 共通部分空間 + 専門部分空間の階層構造"
# The shared expert's overlap with the routed experts must exceed the routed experts' overlap
# with each other by more than 2 units of z.
MARGIN = 2.0


def evaluate(runs: dict, name: str = "deepseek-moe", where: str = "the DeepSeek-style run") -> Verdict:
    """``runs[name]["weights"]``: per MoE layer view_geometry with its ``shared`` experts.

    A model without shared experts has nothing to measure: the verdict is inconclusive and says so.
    """
    geo = runs[name]["weights"]
    shared = [s["z"] for g in geo for s in g["shared"]]
    routed = [g["experts"]["z"] for g in geo]
    rule = (f"supported if shared-vs-routed overlap z exceeds routed-vs-routed z by > {MARGIN}; not supported if "
            f"it is lower by > {MARGIN}; inconclusive otherwise (and when the model has no shared expert)")
    if not shared:
        return Verdict(
            claim_id=10, claim=CLAIM, lecture=LECTURE, verdict="inconclusive", rule=rule,
            key=KeyNumber("shared experts in the MoE layers", 0.0),
            measured=(f"{where} has no shared expert in any of its {len(geo)} MoE layer(s), so there is no "
                      f"shared-vs-routed overlap to measure (routed-vs-routed z = {mean(routed):+.1f}, layer mean)."),
            baseline="overlap among the routed experts of the same layers, both against random subspaces",
            numbers={"shared_z": [], "routed_z": routed, "not_applicable": "no shared expert"},
            caveat="Not applicable to this model: the claim is about models with a shared expert "
                   "(DeepSeek-MoE, Qwen2-MoE, Llama 4, ...).",
            figures=("expert_overlap.png",),
        )
    gap = mean(shared) - mean(routed)
    verdict = "supported" if gap > MARGIN else ("not supported" if gap < -MARGIN else "inconclusive")
    return Verdict(
        claim_id=10, claim=CLAIM, lecture=LECTURE, verdict=verdict, rule=rule,
        key=KeyNumber("z(shared vs routed) − z(routed vs routed)", gap),
        measured=(f"in {where}, the shared expert's subspace overlaps the routed experts' with z = "
                  f"{mean(shared):+.1f} (layer mean) against z = {mean(routed):+.1f} among routed experts."),
        baseline="overlap among the routed experts of the same layers, both against random subspaces",
        numbers={"shared_z": shared, "routed_z": routed},
        figures=("expert_overlap.png",),
    )
