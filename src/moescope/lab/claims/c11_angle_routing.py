"""Claim 11: routing picks a subspace by the angle (or inner product) with expert centroids."""

from __future__ import annotations

from moescope.lab.claims._trained import mean
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Routing picks an expert by the angle (or inner product) between token and expert centroid"
LECTURE = "入力ベクトルと各Expert重心の角度（または内積）で決定されることが多い"
# "Decided by the angle": cosine alone reproduces at least 80% of the dot-product router's
# first choices (chance: 1/E) ...
MIN_AGREEMENT = 0.8
# ... and a router built on the angle alone trains to within 5% of the dot-product router's loss.
MAX_LOSS_GAP = 0.05


def evaluate(runs: dict, angle: dict, baseline: str = "top2", cosine: str | None = "cosine-top2",
             where: str = "the trained dot-product router") -> Verdict:
    """``angle["layers"]``: per MoE layer agreement of top-1 of cos with top-1 of x·c; ``runs[cosine]``: the
    cosine-router run. Without a cosine-router run (``cosine`` None or absent: a given checkpoint, which
    cannot be retrained) only the agreement condition is measured, and the verdict says so.
    """
    agree = mean(lay["top1"] for lay in angle["layers"])
    chance = angle["layers"][0]["chance_top1"]
    conditions = {f"angle reproduces ≥ {MIN_AGREEMENT:.0%} of first choices": agree >= MIN_AGREEMENT}
    retrained = cosine is not None and cosine in runs
    if retrained:
        gap = runs[cosine]["val_loss"] / runs[baseline]["val_loss"] - 1
        conditions[f"cosine router within {MAX_LOSS_GAP:.0%} of the dot-product loss"] = gap <= MAX_LOSS_GAP
        loss = (f"; the cosine-router run's validation loss is {runs[cosine]['val_loss']:.3f} vs "
                f"{runs[baseline]['val_loss']:.3f} ({gap:+.1%})")
    else:
        gap, loss = None, ""
    held = sum(conditions.values())
    verdict = "supported" if held == len(conditions) else ("not supported" if held == 0 else "inconclusive")
    return Verdict(
        claim_id=11, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule=("supported if both: " if retrained else "supported if (the only condition measurable without "
              "retraining a cosine router): ") + "; ".join(conditions),
        key=KeyNumber("share of first choices the angle alone reproduces", agree),
        measured=(f"dropping the norms (cos instead of x·c) keeps {agree:.1%} of the first choices of {where} "
                  f"(chance {chance:.1%}){loss}."),
        baseline="chance agreement 1/E" + ("; the dot-product (top-2 softmax) router's loss" if retrained else ""),
        numbers={"conditions": conditions, "agreement_by_layer": angle["layers"], "loss_gap": gap},
        caveat="" if retrained else ("Measured on a given checkpoint: the second half of the test, training the "
                                     "same model with a cosine router, needs the lab's own training runs."),
        figures=("angle_agreement.png",),
    )
