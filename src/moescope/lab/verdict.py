"""The verdict a lab claim ends in: computed from measurements, never written by hand.

Every claim file returns a :class:`Verdict`: the claim, the verdict (``supported``, ``not
supported``, ``inconclusive``), the rule that decided it (thresholds stated beside their
reason in the claim file), the key number with its uncertainty, the null model or
baseline it was held against, the caveat, and the figures. "Not supported" is a finding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

VERDICTS = ("supported", "not supported", "inconclusive")


@dataclass(frozen=True)
class KeyNumber:
    """The number a reader should remember, with its uncertainty (None if exact)."""

    name: str
    value: float
    uncertainty: float | None = None
    unit: str = ""

    def text(self) -> str:
        v = f"{self.value:.4g}"
        u = f" ± {self.uncertainty:.2g}" if self.uncertainty is not None else ""
        return f"{self.name} = {v}{u}{(' ' + self.unit) if self.unit else ''}"


@dataclass(frozen=True)
class Verdict:
    """One lecture claim, measured."""

    claim_id: int
    claim: str
    lecture: str                   # the lecture's own words (Japanese), quoted
    verdict: str
    rule: str                      # the threshold rule that decided, with its reason
    key: KeyNumber
    measured: str                  # one computed sentence: what was measured
    baseline: str                  # the null model or baseline it was held against
    numbers: dict = field(default_factory=dict)
    caveat: str = ""
    figures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}; got {self.verdict!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def decide(conditions: dict[str, bool]) -> str:
    """All conditions hold: supported; none: not supported; some: inconclusive."""
    held = sum(conditions.values())
    if held == len(conditions):
        return "supported"
    return "not supported" if held == 0 else "inconclusive"
