"""The verdict a lab claim ends in: computed from measurements, never written by hand.

Every claim file returns a :class:`Verdict`: the claim, the verdict, the rule that decided it
(margins stated beside their reason in the claim file), the key number with its interval, the
null model or baseline it was held against, the caveat, and the figures.

Three verdicts are findings — ``supported``, ``not supported`` (also a finding), ``inconclusive``
— and a fourth kind is not: **holds by construction**, a statement that is true because of how
the model or the mathematics is built (k of E experts act per token). Such statements go into
:attr:`Verdict.construction`, are shown in their own section and are never counted as support;
the verdict itself answers the empirical question the lecture implies.

Empirical verdicts come from :class:`moescope.stats.Evidence` (raw values + method + margin):
:func:`judge` assesses each, combines them as a conjunction, and builds the key number from the
first — so the number shown is the number the rule used, and ``moescope.lab.recheck`` can
recompute every effect, interval and verdict from the stored raw values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from moescope.stats import Assessment, Evidence, assess, combine

VERDICTS = ("supported", "not supported", "inconclusive")
BY_CONSTRUCTION = "holds by construction"
KINDS = (*VERDICTS, BY_CONSTRUCTION)


@dataclass(frozen=True)
class KeyNumber:
    """The number a reader should remember, with the interval the rule read.

    ``interval`` None: an exact number (no sampling); ``(None, None)``: no interval could be formed (one
    replicate) — JSON has no infinity, so the unbounded interval is written this way.
    """

    name: str
    value: float
    interval: tuple[float, float] | None = None
    level: float | None = None
    unit: str = ""

    def __post_init__(self) -> None:
        if self.interval is not None:
            object.__setattr__(self, "interval", tuple(None if x is None or not math.isfinite(x) else float(x)
                                                       for x in self.interval))


@dataclass(frozen=True)
class Verdict:
    """One lecture claim, measured."""

    claim_id: int
    claim: str
    lecture: str                   # the lecture's own words (Japanese), quoted
    verdict: str
    rule: str                      # the rule that decided, with its margin and the reason for it
    key: KeyNumber
    measured: str                  # one computed sentence: what was measured
    baseline: str                  # the null model or baseline it was held against
    numbers: dict = field(default_factory=dict)
    caveat: str = ""
    figures: tuple[str, ...] = ()
    evidence: tuple[dict, ...] = ()        # Evidence.to_dict() of every condition, in rule order
    construction: tuple[str, ...] = ()     # statements that hold by construction (never findings)
    timing: str = ""                       # a wall-clock measurement, reported but never deciding (varies by run)

    def __post_init__(self) -> None:
        if self.verdict not in KINDS:
            raise ValueError(f"verdict must be one of {KINDS}; got {self.verdict!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def decide(conditions: dict[str, bool]) -> str:
    """All conditions hold: supported; none: not supported; some: inconclusive.

    For exact laws checked against Monte Carlo (claims 1-4), where each condition already carries
    its own tolerance; empirical claims with sampling error use :func:`judge`.
    """
    if not conditions:
        raise ValueError("decide: need at least one condition")
    held = sum(conditions.values())
    if held == len(conditions):
        return "supported"
    return "not supported" if held == 0 else "inconclusive"


@dataclass(frozen=True)
class Judgement:
    verdict: str
    key: KeyNumber
    assessments: tuple[Assessment, ...]
    evidence: tuple[dict, ...]


def judge(evidence: Sequence[Evidence], key_name: str | None = None, unit: str = "") -> Judgement:
    """Assess every condition, combine them (all must hold), and key the verdict on the first."""
    if not evidence:
        raise ValueError("judge: need at least one piece of evidence")
    assessments = tuple(assess(e) for e in evidence)
    first, a = evidence[0], assessments[0]
    key = KeyNumber(key_name or first.name, a.effect, a.interval, first.level, unit)
    return Judgement(combine([x.verdict for x in assessments]), key, assessments,
                     tuple(e.to_dict() for e in evidence))


def rule_text(evidence: Sequence[Evidence]) -> str:
    """The decision rule of each condition, in words, from the evidence itself (one source of truth)."""
    parts = []
    for e in evidence:
        side = ">" if e.side == "greater" else "<"
        other = "<" if e.side == "greater" else ">"
        hi = e.reference + e.margin if e.side == "greater" else e.reference - e.margin
        lo = e.reference - e.margin if e.side == "greater" else e.reference + e.margin
        how = {"t": f"{e.level:.0%} t-interval over {e.unit or 'seed'}s",
               "paired_t": f"{e.level:.0%} paired t-interval over {e.unit or 'seed'}s",
               "bootstrap": f"{e.level:.0%} bootstrap interval over {e.unit or 'unit'}s",
               "permutation_ratio": f"{e.level:.0%} interval of the permutation null",
               "permutation_shift": f"{e.level:.0%} interval of the null draws",
               "exact": "exact value"}[e.method]
        parts.append(f"{e.name}: supported if the {how} lies wholly {side} {hi:.4g}, not supported if wholly "
                     f"{other} {lo:.4g}, inconclusive otherwise")
    joined = "; ".join(parts)
    return joined if len(parts) == 1 else "all must hold — " + joined
