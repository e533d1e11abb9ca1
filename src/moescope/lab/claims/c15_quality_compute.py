"""Claim 15: Soft MoE makes routing continuous; Switch top-1 is sparser than top-2.

Both halves hold by construction: Switch sends each token to one expert instead of two, and Soft
MoE's combine weights are a softmax over all slots, so every token mixes every slot. The empirical
question the lecture implies is what that buys: quality at equal active compute. Soft MoE mixes
tokens across positions, so it trains on a bidirectional masked-token objective and is compared
only with the dense masked-token model of the same active parameters, never with the causal LMs.
"""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, loss_gain, mean
from moescope.lab.verdict import Verdict, judge, rule_text

CLAIM = "Soft MoE makes routing continuous; Switch top-1 is sparser than top-2"
LECTURE = "Switch Transformer: Top-1 routing でさらにスパース化 / Soft MoE: 離散的ルーティングを連続化"
ID = 15
NEEDS = ("training",)
FIGURES = ("quality_vs_compute.png",)
# Soft MoE must beat the dense masked-token model of equal active parameters by 0.02 nats of
# validation loss — about 2% in perplexity, a difference too small to matter; the seed-to-seed spread
# (0.1-0.3 nats at the quick scale) is what the interval carries, not the margin.
MARGIN = 0.02


def evaluate(runs: dict, soft_stats: dict) -> Verdict:
    pairs, gain = loss_gain(runs, "soft-moe", "dense-masked",
                            "validation loss, dense − Soft MoE at equal active parameters (masked objective)", MARGIN)
    evidence = [gain]
    j = judge(evidence)
    a = j.assessments[0]
    top2, switch = runs["top2"], runs["switch-top1"]
    causal = {n: r for n, r in runs.items() if r["objective"] == "causal" and "-seed" not in n}
    masked = {n: r for n, r in runs.items() if r["objective"] == "masked" and "-seed" not in n}
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"over {len(pairs)} seeds, Soft MoE's masked-token validation loss is "
                  f"{mean(s['val_loss'] for s, _ in pairs):.3f} against {mean(d['val_loss'] for _, d in pairs):.3f} "
                  f"for the dense model of equal active parameters ({a.effect:+.3f} nats {fmt_interval(a)}); its "
                  f"combine entropy is {soft_stats['combine_entropy']:.2f} of the maximum. Switch top-1: validation "
                  f"loss {switch['val_loss']:.3f} vs top-2's {top2['val_loss']:.3f}. Causal LMs (seed 0): "
                  + ", ".join(f"{n} {r['val_loss']:.3f}" for n, r in causal.items())
                  + ". Masked-token (non-causal, compared only among themselves): "
                  + ", ".join(f"{n} {r['val_loss']:.3f}" for n, r in masked.items()) + "."),
        baseline="a dense FFN with Soft MoE's active parameters per token, same objective and seed",
        numbers={"soft": soft_stats,
                 "runs": {n: {"val_loss": r["val_loss"], "params_active": r["params_active"],
                              "params_total": r["params_total"], "objective": r["objective"]}
                          for n, r in runs.items()}},
        evidence=j.evidence,
        construction=(f"Switch top-1 activates {switch['params_active']:,} parameters per token against top-2's "
                      f"{top2['params_active']:,}: one expert instead of two.",
                      "Soft MoE's combine weights are a softmax over all slots: every token mixes every slot "
                      f"(measured combine entropy {soft_stats['combine_entropy']:.2f} of its maximum)."),
        caveat="Soft MoE and Expert Choice see the future through their token mixing, so they are trained on a "
               "bidirectional masked-token objective and never compared with the causal language models.",
        figures=FIGURES,
    )


NEEDS_TRAINING = "Switch, top-2, Soft MoE and dense masked-token runs"


def from_lab(data: dict) -> Verdict:
    t = data["training"]
    return evaluate(t["runs"], t["soft"])
