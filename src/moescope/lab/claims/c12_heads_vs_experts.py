"""Claim 12: MHA projects onto all subspaces at once, MoE onto a chosen one."""

from __future__ import annotations

from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Multi-head attention projects onto all its subspaces at once; MoE onto the chosen ones"
LECTURE = "Multi-head Attention: 常に全ヘッド・部分空間への同時射影 / MoE: 動的に選択・部分空間への条件付き射影"


def evaluate(used: dict, top_k: int, num_experts: int, where: str | None = None) -> Verdict:
    """``used``: ``head_share`` (None when no attention was found; ``reason`` says why), ``expert_share``,
    ``n_head``, optionally ``geometry`` (per MoE layer, head vs expert subspaces; reported, not decisive);
    ``where`` names the model (default: the lab's trained top-k model)."""
    where = where or f"the trained top-{top_k} model"
    head, expert = used["head_share"], used["expert_share"]
    rule_expert = f"each token reaches only the chosen experts (share ≤ {top_k}/{num_experts} + 1%)"
    if head is None:
        return Verdict(
            claim_id=12, claim=CLAIM, lecture=LECTURE, verdict="inconclusive",
            rule=f"supported if both: every head acts on every token (share ≥ 99%); {rule_expert}",
            key=KeyNumber("share of experts acting on a token", expert),
            measured=f"in {where}, {expert:.1%} of the {num_experts} experts act on each token; the heads could "
                     f"not be measured: {used.get('reason', 'no attention heads found')}.",
            baseline=f"top-{top_k} routing's k/E = {top_k / num_experts:.1%}",
            numbers=dict(used), caveat="Not applicable in full: no attention heads were measured.",
            figures=("heads_vs_experts.png",))
    conditions = {"every head acts on every token (share ≥ 99%)": head >= 0.99,
                  rule_expert: expert <= top_k / num_experts + 0.01}
    held = sum(conditions.values())
    verdict = "supported" if held == 2 else ("not supported" if held == 0 else "inconclusive")
    geo = used.get("geometry") or []
    subspaces = ""
    if geo:
        zq = [g["query"]["vs_experts_z"] for g in geo]
        subspaces = (f" The heads' query subspaces overlap the experts' input subspaces with z = "
                     f"{', '.join(f'{z:+.1f}' for z in zq)} per layer against random subspaces.")
    elif used.get("geometry_skipped"):
        subspaces = f" Head subspaces were not compared: {used['geometry_skipped']}."
    return Verdict(
        claim_id=12, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule="supported if both: " + "; ".join(conditions),
        key=KeyNumber("share of subspaces acting on a token: heads / experts", head / max(expert, 1e-12)),
        measured=(f"in {where}, {head:.1%} of the {used['n_head']} attention heads contribute "
                  f"to each token's output, against {expert:.1%} of the {num_experts} experts.{subspaces}"),
        baseline=f"top-{top_k} routing's k/E = {top_k / num_experts:.1%}",
        numbers={"conditions": conditions, **used},
        figures=("heads_vs_experts.png",),
    )
