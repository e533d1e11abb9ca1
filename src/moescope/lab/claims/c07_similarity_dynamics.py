"""Claim 7 (observation): expert similarity falls as training goes on."""

from __future__ import annotations

from moescope.lab.claims._trained import mean
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Expert similarity falls as training goes on"
LECTURE = "経験的観察: 学習が進むと、Expert間の類似度が下がる傾向"
# The overlap z (against random subspaces, layer mean) must move by more than 2 units of the
# null's sd between the first and the last checkpoint to count as a trend.
DELTA_Z = 2.0


def evaluate(runs: dict, baseline: str = "top2") -> Verdict:
    dyn = runs[baseline]["dynamics"]
    steps = [d["step"] for d in dyn]
    z = [mean(g["experts"]["z"] for g in d["weights"]) for d in dyn]
    cos2 = [mean(g["experts"]["mean_cos2_pairs"] for g in d["weights"]) for d in dyn]
    change = z[-1] - z[0]
    verdict = "supported" if change < -DELTA_Z else ("not supported" if change > DELTA_Z else "inconclusive")
    return Verdict(
        claim_id=7, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule=f"supported if the overlap z falls by more than {DELTA_Z} from the first to the last checkpoint; "
             f"not supported if it rises by more than {DELTA_Z}; inconclusive otherwise",
        key=KeyNumber("change of overlap z over training", change),
        measured=(f"mean cos² between expert subspaces goes {' → '.join(f'{c:.4f}' for c in cos2)} at steps "
                  f"{', '.join(map(str, steps))} (overlap z {z[0]:+.1f} → {z[-1]:+.1f})."),
        baseline="the same model at its initialisation (step 0) and the random-subspace null",
        numbers={"steps": steps, "z": z, "mean_cos2": cos2},
        caveat="One tiny model on a small corpus; the lecture calls this a tendency, not a law.",
        figures=("expert_similarity_dynamics.png",),
    )
