"""Claim 16: trees embed with lower distortion in hyperbolic than in Euclidean space.

Wraps :func:`moescope.lab.curvature.claim16` (threshold and reason stated there) as a Verdict.
"""

from __future__ import annotations

from moescope.lab.curvature import claim16
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Trees embed with lower distortion in hyperbolic space than in Euclidean space of the same dimension"
LECTURE = "Hyperbolic LLMs / HypLoRA / 双曲空間での表現学習（最新動向）"
ID = 16
NEEDS = ("curvature",)
FIGURES = ("poincare_disk.png", "distortion.png")


def evaluate(curvature: dict) -> Verdict:
    c = claim16(curvature)
    n = c["numbers"]
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=c["verdict"],
        rule=f"supported if H's average distortion ≤ {c['threshold']}× E's and every restart is separated; "
             f"not supported if H is no better than E ({c['reason']})",
        key=KeyNumber("H/E average distortion on the tree", n.get("ratio", float("nan"))),
        measured=c["sentence"], baseline=c["null"], numbers=n,
        caveat="Gu et al.'s graphs are re-generated locally and trained here; the published values are a reference.",
        figures=FIGURES,
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["curvature"])
