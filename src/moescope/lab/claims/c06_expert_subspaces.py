"""Claim 6 (hypothesis): experts take near-orthogonal subspaces."""

from __future__ import annotations

from moescope.lab.claims._trained import geometry, mean
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Experts take near-orthogonal subspaces (the lecture's hypothesis)"
LECTURE = "良いMoEの仮説: 各Expertが担当する部分空間は、互いにほぼ直交している"
# z of the layer's mean overlap Σcos²θ against random subspaces: |z| <= 3 is what random
# (hence near-orthogonal in high dimension) subspaces give; z > 3: experts share directions.
Z = 3.0


def evaluate(runs: dict, baseline: str = "top2", where: str = "the trained top-2 model") -> Verdict:
    """``runs[baseline]["weights"]``: per MoE layer view_geometry; ``where`` names the model in the text."""
    geo = geometry(runs[baseline])
    zs = [g["experts"]["z"] for g in geo]
    ratio = mean(g["experts"]["ratio_to_null"] for g in geo)
    if all(z <= Z for z in zs):
        verdict = "supported"
    elif all(z > Z for z in zs):
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    g0 = geo[0]["experts"]
    return Verdict(
        claim_id=6, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule=f"supported if every layer's expert overlap is no larger than random subspaces' (z ≤ {Z}); not "
             f"supported if every layer's is larger (z > {Z}); inconclusive otherwise",
        key=KeyNumber("mean overlap / random-subspace null (layer mean)", ratio),
        measured=(f"in {where}, the mean Σcos² of principal angles between expert input subspaces "
                  f"(rank {g0['rank']} of H={geo[0]['hidden']}) is {ratio:.2f}× the random-subspace null; z per "
                  f"layer: {', '.join(f'{z:+.1f}' for z in zs)}."),
        baseline="Haar-random r-dimensional subspaces of R^H: E Σcos²θ = r²/H with its exact variance",
        numbers={"z": zs, "ratio_to_null": [g["experts"]["ratio_to_null"] for g in geo]},
        caveat="The lecture warns the orthogonal-subspace picture is an idealised hypothesis; random subspaces of "
               "high dimension are already nearly orthogonal, so 'no more overlap than random' is the test.",
        figures=("expert_overlap.png",),
    )
