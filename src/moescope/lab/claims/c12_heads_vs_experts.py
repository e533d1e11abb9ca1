"""Claim 12: MHA projects onto all subspaces at once, MoE onto a chosen one.

That a token reaches only k of E experts, and that every head computes an output for every token,
holds by construction. The empirical question is whether attention *uses* all its subspaces at once:
how many heads carry most (90%) of a token's attention output — each head's contribution to the
residual stream, its output times its block of W_o — as a share of the heads. Training could have
concentrated the output onto a few heads (the lecture says it does not: "常に全ヘッド"); an untrained
model, whose heads are alike, satisfies the claim trivially, so what is tested is the trained model.
The experts' share, which cannot exceed k/E, is measured the same way and reported beside it.
"""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, mean
from moescope.lab.verdict import KeyNumber, Verdict, judge, rule_text
from moescope.stats import Evidence

CLAIM = "Multi-head attention projects onto all its subspaces at once; MoE onto the chosen ones"
LECTURE = "Multi-head Attention: 常に全ヘッド・部分空間への同時射影 / MoE: 動的に選択・部分空間への条件付き射影"
ID = 12
NEEDS = ("training",)
FIGURES = ("heads_vs_experts.png",)
# "All heads at once": at least three quarters of the heads are needed to carry 90% of a token's attention
# output (with 4 heads: every token needs 3 or 4). Supported when the interval lies wholly above 0.75,
# not supported when wholly below.
ALL_HEADS = 0.75


def evaluate(shares: list[dict], top_k: int, num_experts: int, where: str | None = None,
             unit: str = "seed", reason: str | None = None) -> Verdict:
    """``shares``: one dict per seed (lab) or per batch (a checkpoint) with ``head_fraction`` (share of heads
    carrying 90% of the attention output, mean over tokens and layers) and optionally ``expert_fraction``."""
    where = where or f"the trained top-{top_k} model"
    chance = top_k / num_experts
    if not shares:
        return Verdict(claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict="inconclusive",
                       rule="needs the attention heads' outputs", key=KeyNumber("attention outputs recorded", 0.0),
                       measured=f"in {where}, {reason or 'no self-attention output projection was found'}.",
                       baseline=f"top-{top_k} routing's k/E = {chance:.1%}", numbers={"chance": chance},
                       caveat="Not applicable in full: no attention heads were measured.", figures=FIGURES)
    values = [s["head_fraction"] for s in shares]
    evidence = [Evidence("share of heads carrying 90% of a token's attention output",
                         "t" if unit == "seed" else "bootstrap", values, reference=ALL_HEADS, margin=0.0,
                         side="greater", unit=unit)]
    j = judge(evidence)
    a = j.assessments[0]
    experts = [s["expert_fraction"] for s in shares if s.get("expert_fraction") is not None]
    exp_text = (f"; {mean(experts):.1%} of the {num_experts} experts carry 90% of the MoE output (at most "
                f"k/E = {chance:.1%})" if experts else "")
    n_head = shares[0].get("n_head", "the")
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"in {where}, {a.effect:.1%} {fmt_interval(a)} of the {n_head} attention heads are needed to "
                  f"carry 90% of a token's attention output{exp_text}."),
        baseline=f"all heads (1.0); the experts' share is bounded by top-{top_k} routing's k/E = {chance:.1%}",
        numbers={"head_fraction": values, "expert_fraction": experts, "chance": chance},
        evidence=j.evidence,
        construction=(f"Each token is processed by exactly k = {top_k} of E = {num_experts} experts (the router "
                      "chooses them), while every attention head computes an output for every token.",),
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    t = data["training"]
    return evaluate(t["output_shares"], t["top_k"], t["num_experts"])


def from_checkpoint(data: dict) -> Verdict:
    t = data["checkpoint"]
    return evaluate(t["output_shares"], t["top_k"], t["num_experts"], where=t["where"], unit="batch",
                    reason=t["subspaces_used"].get("reason"))
