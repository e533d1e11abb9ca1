"""Claim 9: load balancing spreads routing evenly over the sphere."""

from __future__ import annotations

from moescope.lab.claims._trained import layers, mean
from moescope.lab.verdict import KeyNumber, Verdict

CLAIM = "Load balancing spreads routing evenly over the sphere"
LECTURE = "Load Balancing Loss の幾何学: 球面上の均等分布を促す正則化"


def evaluate(runs: dict) -> Verdict:
    b, z = runs["top2"], runs["top2-alpha0"]
    ent_b, ent_0 = mean(x["load_entropy"] for x in layers(b)), mean(x["load_entropy"] for x in layers(z))
    res_b = mean(g["router"]["resultant_length"] for g in b["weights"])
    res_0 = mean(g["router"]["resultant_length"] for g in z["weights"])
    conditions = {"routed tokens spread more evenly over experts with balancing": ent_b > ent_0,
                  "router centroids spread more evenly on the sphere (shorter mean direction)": res_b < res_0}
    held = sum(conditions.values())
    verdict = "supported" if held == 2 else ("not supported" if held == 0 else "inconclusive")
    return Verdict(
        claim_id=9, claim=CLAIM, lecture=LECTURE, verdict=verdict,
        rule="supported if with balancing both the load entropy is higher and the centroids' mean unit vector is "
             "shorter than without; not supported if neither; inconclusive if one",
        key=KeyNumber("load entropy with / without balancing", ent_b / max(ent_0, 1e-12)),
        measured=(f"normalised load entropy {ent_b:.3f} with vs {ent_0:.3f} without balancing; length of the mean "
                  f"unit centroid {res_b:.3f} vs {res_0:.3f} (uniform directions: ≈ 1/√E)."),
        baseline="the α = 0 run; for centroids, uniform directions on the sphere",
        numbers={"conditions": conditions, "entropy": [ent_b, ent_0], "resultant": [res_b, res_0]},
        figures=("balance_load.png",),
    )
