"""Claim 7 (observation): expert similarity falls as training goes on.

Similarity is the experts' mean subspace overlap *relative to random regroupings of the same
hidden units* (:mod:`moescope.analysis.expert_null`), at one fixed rank per layer (the final
checkpoint's) for every checkpoint — so a change means the grouping separated, not that the
neurons as a whole grew more or less aligned. Tested from two starts: the usual random
initialisation (similarity starts at chance) and an *upcycled* start, every expert a copy of one
FFN plus small noise as sparse upcycling begins (Komatsuzaki et al. 2022), where similarity
starts high — the observation should hold from both. From copies, *any* change lowers similarity,
so the upcycled start is held against a no-learning control: every hidden unit drifted as far as
training moved it, in a random direction (:func:`moescope.lab.trained.drift_null`); training must end
with less similar experts than that drift does.
"""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, mean, seeds
from moescope.lab.verdict import Verdict, judge, rule_text
from moescope.stats import Evidence

CLAIM = "Expert similarity falls as training goes on"
LECTURE = "経験的観察: 学習が進むと、Expert間の類似度が下がる傾向"
ID = 7
NEEDS = ("training",)
FIGURES = ("expert_similarity_dynamics.png",)
# The permutation-relative overlap must fall by more than 0.03 (3% of the chance level) from the first
# to the last checkpoint: less is within a few times the null's own spread (~1% of chance).
MARGIN = 0.03


def _curve(run: dict) -> list[float]:
    return [mean(x["ratio"] for x in d["expert_null"]) for d in run["dynamics"]]


def _evidence(runs: dict, prefix: str) -> Evidence | None:
    """Random start: last − first checkpoint. Upcycled start: last checkpoint − the same drift at random."""
    reps = [r for r in seeds(runs, prefix) if r.get("dynamics")]
    if not reps:
        return None
    if prefix.endswith("upcycled"):
        reps = [r for r in reps if r.get("drift_null")]
        if not reps:
            return None
        return Evidence("overlap / random regroupings at the last checkpoint − after a random drift of the same "
                        "size (upcycled start)", "t", [_curve(r)[-1] - mean(r["drift_null"]) for r in reps],
                        reference=0.0, margin=MARGIN, side="less", unit="seed")
    changes = [c[-1] - c[0] for c in map(_curve, reps)]
    return Evidence("change of overlap / random regroupings, first → last checkpoint (random start)",
                    "t", changes, reference=0.0, margin=MARGIN, side="less", unit="seed")


def evaluate(runs: dict, baseline: str = "top2", upcycled: str = "top2-upcycled") -> Verdict:
    """``runs[name]["dynamics"]``: per kept checkpoint ``step`` and per-layer ``expert_null`` at a fixed rank."""
    evidence = [e for e in (_evidence(runs, baseline), _evidence(runs, upcycled)) if e is not None]
    if not evidence:
        raise ValueError(f"claim 7 needs the checkpoint trajectory ('dynamics') of {baseline!r} or {upcycled!r}")
    j = judge(evidence)
    base = next(r for name in (baseline, upcycled) for r in seeds(runs, name) if r.get("dynamics"))
    steps = [d["step"] for d in base["dynamics"]]
    curves = {name: [_curve(r) for r in seeds(runs, name) if r.get("dynamics")] for name in (baseline, upcycled)}
    parts = []
    for ev, a in zip(evidence, j.assessments, strict=True):
        name = upcycled if "upcycled" in ev.name else baseline
        cs = curves[name]
        first, last = mean(c[0] for c in cs), mean(c[-1] for c in cs)
        if name == upcycled:
            drift = mean(mean(r["drift_null"]) for r in seeds(runs, name) if r.get("drift_null"))
            parts.append(f"{name}: {first:.3f} → {last:.3f}, against {drift:.3f} after a random drift of the same "
                         f"size ({a.effect:+.3f} {fmt_interval(a)}, {len(cs)} seeds)")
        else:
            parts.append(f"{name}: {first:.3f} → {last:.3f} (change {a.effect:+.3f} {fmt_interval(a)}, "
                         f"{len(cs)} seeds)")
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=("the experts' mean overlap relative to random regroupings of their own hidden units, at steps "
                  f"{', '.join(map(str, steps))}, goes " + "; ".join(parts) + "."),
        baseline="the same run at its first checkpoint (step 0) — from an upcycled start, a random drift of the "
                 "hidden units as large as training's — all held against random regroupings of the same hidden "
                 "units at one fixed rank",
        numbers={"steps": steps, "curves": curves,
                 "mean_cos2": [mean(g["experts"]["mean_cos2_pairs"] for g in d["weights"])
                               for d in base["dynamics"]]},
        evidence=j.evidence,
        caveat="Tiny models on a small corpus; the lecture calls this a tendency, not a law.",
        figures=FIGURES,
    )


NEEDS_TRAINING = "checkpoints over training, from a random and an upcycled start"


def from_lab(data: dict) -> Verdict:
    return evaluate(data["training"]["runs"])
