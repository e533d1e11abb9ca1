"""Claim 12: MHA projects onto all subspaces at once, MoE onto a chosen one."""

from __future__ import annotations

from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Multi-head attention projects onto all its subspaces at once; MoE onto the chosen ones"
LECTURE = "Multi-head Attention: 常に全ヘッド・部分空間への同時射影 / MoE: 動的に選択・部分空間への条件付き射影"


def evaluate(used: dict, top_k: int, num_experts: int) -> Verdict:
    head, expert = used["head_share"], used["expert_share"]
    conditions = {"every head acts on every token (share ≥ 99%)": head >= 0.99,
                  f"each token reaches only the chosen experts (share ≤ {top_k}/{num_experts} + 1%)":
                      expert <= top_k / num_experts + 0.01}
    held = sum(conditions.values())
    verdict = "supported" if held == 2 else ("not supported" if held == 0 else "inconclusive")
    return Verdict(
        claim_id=12, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule="supported if both: " + "; ".join(conditions),
        key=KeyNumber("share of subspaces acting on a token: heads / experts", head / max(expert, 1e-12)),
        measured=(f"in the trained top-{top_k} model, {head:.1%} of the {used['n_head']} attention heads contribute "
                  f"to each token's output, against {expert:.1%} of the {num_experts} experts."),
        baseline=f"top-{top_k} routing's k/E = {top_k / num_experts:.1%}",
        numbers={"conditions": conditions, **used},
        figures=("heads_vs_experts.png",),
    )
