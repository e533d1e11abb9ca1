"""Claim 15: Soft MoE makes routing continuous; Switch top-1 is sparser than top-2."""

from __future__ import annotations

from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Soft MoE makes routing continuous; Switch top-1 is sparser than top-2"
LECTURE = "Switch Transformer: Top-1 routing でさらにスパース化 / Soft MoE: 離散的ルーティングを連続化"
# "Continuous": every Soft MoE token mixes many slots — its combine weights are spread (normalised
# entropy > 0.5), where token-choice top-2 puts all weight on 2 of 8 experts.
MIN_SOFT_ENTROPY = 0.5


def evaluate(runs: dict, soft_stats: dict) -> Verdict:
    top2, switch = runs["top2"], runs["switch-top1"]
    soft_entropy = soft_stats["combine_entropy"]
    conditions = {"Switch activates fewer parameters per token than top-2":
                      switch["params_active"] < top2["params_active"],
                  f"Soft MoE's combine weights are spread (entropy > {MIN_SOFT_ENTROPY})":
                      soft_entropy > MIN_SOFT_ENTROPY}
    held = sum(conditions.values())
    verdict = "supported" if held == 2 else ("not supported" if held == 0 else "inconclusive")
    causal = {n: r for n, r in runs.items() if r["objective"] == "causal"}
    masked = {n: r for n, r in runs.items() if r["objective"] == "masked"}
    return Verdict(
        claim_id=15, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule="supported if both: " + "; ".join(conditions),
        key=KeyNumber("Switch / top-2 active parameters", switch["params_active"] / top2["params_active"]),
        measured=(f"Switch top-1 activates {switch['params_active']:,} parameters per token against top-2's "
                  f"{top2['params_active']:,} (validation loss {switch['val_loss']:.3f} vs {top2['val_loss']:.3f}); "
                  f"Soft MoE's combine entropy is {soft_entropy:.2f} of its maximum. Causal LMs: "
                  + ", ".join(f"{n} {r['val_loss']:.3f}" for n, r in causal.items())
                  + ". Masked-token (non-causal, compared only among themselves): "
                  + ", ".join(f"{n} {r['val_loss']:.3f}" for n, r in masked.items()) + "."),
        baseline="top-2 routing at the same total parameters; dense models of equal active / total parameters",
        numbers={"conditions": conditions, "soft": soft_stats,
                 "runs": {n: {"val_loss": r["val_loss"], "params_active": r["params_active"],
                              "params_total": r["params_total"], "objective": r["objective"]}
                          for n, r in runs.items()}},
        caveat="Soft MoE and Expert Choice see the future through their token mixing, so they are trained on a "
               "bidirectional masked-token objective and never compared with the causal language models.",
        figures=("quality_vs_compute.png",),
    )
