"""Claim 4: tiny noise misclassifies; there are high-dimensional shortcuts.

Input: the digits experiment of :func:`moescope.adversarial.experiment.run_experiment`
(accuracy under FGSM / PGD / random-sign noise of one budget, and the dimension sweep of
the distance to the decision boundary along DeepFool's direction vs random lines).
"""

from __future__ import annotations

import numpy as np

from moescope.lab.verdict import KeyNumber, Verdict, decide

CLAIM = "Tiny noise misclassifies; high dimension opens shortcuts to the decision boundary"
LECTURE = "微小ノイズで誤分類が起きる … 決定境界近傍の「高次元の抜け道」"
ID = 4
NEEDS = ("digits",)
FIGURES = ("accuracy_vs_eps.png", "ratio_vs_d.png")
# "Tiny": at L∞ budget 0.15 (2.4 of 16 grey levels) PGD must cost at least half the accuracy
# that the same amount of random-sign noise leaves.
ACCURACY_GAP = 0.5
# "Shortcut": a random line must reach the boundary at least 3x farther than the adversarial
# direction (lower end of its 99% interval) at the largest d ...
MIN_RATIO = 3.0
# ... and the advantage must grow with d (flat-boundary theory: d^0.5; half of that suffices).
MIN_SLOPE = 0.25


def evaluate(digits: dict) -> Verdict:
    mlp = digits["models"]["MLP"]
    curves = mlp["curves"]
    eps = digits["eps"]
    i = int(np.argmin(np.abs(np.asarray(eps) - 0.15)))
    noise, pgd = curves["noise"]["robust_accuracy"][i], curves["pgd"]["robust_accuracy"][i]
    sweep = [s for s in digits["sweep"] if s["model"] == "MLP"]
    d = np.array([s["d"] for s in sweep], dtype=float)
    ratio = np.array([s["boundary"]["median_ratio"] for s in sweep])
    slope = float(np.polyfit(np.log(d), np.log(ratio), 1)[0]) if len(d) > 1 else float("nan")
    top = sweep[-1]["boundary"]
    lo, hi = top["median_ratio_ci99"]
    conditions = {
        "PGD removes at least half the accuracy random noise keeps": noise - pgd >= ACCURACY_GAP * noise,
        f"random lines reach the boundary ≥ {MIN_RATIO}x farther": top["median_ratio_ci99"][0] >= MIN_RATIO,
        "the shortcut grows with d": slope >= MIN_SLOPE,
    }
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=decide(conditions),
        rule="supported if all of: " + "; ".join(conditions) + f" (slope ≥ {MIN_SLOPE}; theory 0.5)",
        key=KeyNumber(f"median random/adversarial boundary distance, d={int(d[-1])}", top["median_ratio"],
                      (lo, hi), 0.99),
        measured=(f"at ε = {eps[i]} the digits MLP keeps {pgd:.1%} accuracy under PGD but {noise:.1%} under "
                  f"random-sign noise; the boundary is {top['median_ratio']:.1f}× farther along a random line "
                  f"than along DeepFool's direction in d={int(d[-1])} (99% CI {lo:.1f}–{hi:.1f}), growing as "
                  f"d^{slope:.2f}."),
        baseline=("random-sign noise of the same L∞ size; for distances, the flat-boundary law "
                  "1/band_quantile(½, d) → √d/0.6745 from the exact sphere law"),
        numbers={"conditions": conditions, "slope": slope, "ratio": dict(zip(d.tolist(), ratio.tolist(),
                                                                            strict=True)),
                 "theory": {s["d"]: s["boundary"]["theory_median_ratio"] for s in sweep}},
        caveat="The lecture itself calls the geometric reading of adversarial examples unsettled research.",
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["digits"])
