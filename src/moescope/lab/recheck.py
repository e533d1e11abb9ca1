"""Recompute every effect, interval and verdict of a lab ``results.json`` from its raw values alone.

``python -m moescope.lab.recheck OUT/results.json`` reads each verdict's stored evidence (the raw
values behind every interval: per seed, per layer or per permutation draw, with the method, the
reference, the margin and the side), assesses it again with :func:`moescope.stats.assess`, combines
the conditions as the lab does, and compares with what the report shows: the verdict, and the key
number and its interval (to ``tol``, relative). Exit status 0 when everything agrees, 1 otherwise,
with one line per disagreement. Claims whose verdict comes from exact laws (no stored evidence) are
listed as not rechecked.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from moescope.stats import Evidence, assess, combine

__all__ = ["recheck"]


def _close(a: float | None, b: float | None, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def recheck(results: dict, tol: float = 1e-9) -> tuple[list[str], list[int]]:
    """Disagreements (one sentence each) and the claim ids that had no evidence to recheck."""
    problems, unchecked = [], []
    for v in results["verdicts"]:
        cid = v["claim_id"]
        if not v.get("evidence"):
            unchecked.append(cid)
            continue
        try:
            assessments = [assess(Evidence.from_dict(e)) for e in v["evidence"]]
        except (TypeError, ValueError) as err:
            problems.append(f"claim {cid}: stored evidence cannot be assessed: {err}")
            continue
        verdict = combine([a.verdict for a in assessments])
        if verdict != v["verdict"]:
            problems.append(f"claim {cid}: the raw values give {verdict!r}, the report says {v['verdict']!r}")
        a, key = assessments[0], v["key"]
        if not _close(a.effect, key["value"], tol):
            problems.append(f"claim {cid}: key number {key['value']!r} but the raw values give {a.effect!r}")
        stored = [None if x is None else x for x in (key.get("interval") or (None, None))]
        fresh = [x if math.isfinite(x) else None for x in a.interval]
        if not all(_close(x, y, tol) for x, y in zip(fresh, stored, strict=True)):
            problems.append(f"claim {cid}: interval {stored!r} but the raw values give {list(a.interval)!r}")
    return problems, unchecked


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m moescope.lab.recheck OUT/results.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        print(f"cannot read {path}: {err}", file=sys.stderr)
        return 2
    problems, unchecked = recheck(results)
    checked = len(results["verdicts"]) - len(unchecked)
    for p in problems:
        print(p)
    print(f"{checked} verdicts rechecked from their raw values: "
          + ("all agree" if not problems else f"{len(problems)} disagreement(s)")
          + (f"; claims {unchecked} rest on exact laws with no stored evidence" if unchecked else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
