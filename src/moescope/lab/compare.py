"""Same seed, same numbers: compare two lab ``results.json`` files.

The lab promises that one seed gives the same numbers (to 1e-6) on the same machine. Every
number is held to that except wall-clock measurements, which no seed can fix: the keys in
:data:`WALL_CLOCK_KEYS` (anywhere in the tree) and the claims in :data:`WALL_CLOCK_CLAIMS`,
whose verdict is decided by a measured time (none today: claim 5 reports its timing but decides
on validation loss). Those are skipped, and the skip is reported, never silent.

``python -m moescope.lab.compare A/results.json B/results.json`` prints the differences
and exits 1 if there are any.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

# keys whose values are wall-clock or machine measurements, wherever they appear
WALL_CLOCK_KEYS = frozenset({
    "seconds", "timings", "machine", "time", "elapsed", "wall_time", "cpu_time", "prep_seconds", "train_seconds",
    "time_moe_s", "time_dense_s", "time_ratio", "time_ratio_spread", "time_ratios", "threads",
    "timing",  # a verdict's wall-clock sentence (claim 5)
})
WALL_CLOCK_CLAIMS: frozenset[int] = frozenset()   # verdicts decided by a measured time: none since claim 5
                                                  # decides on validation loss (its timing is only reported)


@dataclass(frozen=True)
class Difference:
    """Where two results differ: a JSON path and the two values (abbreviated)."""

    path: str
    a: str
    b: str

    def __str__(self) -> str:
        return f"{self.path}: {self.a} != {self.b}"


def _close(x: float, y: float, tol: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= tol * max(1.0, abs(x), abs(y))


def _short(v: object) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _walk(a: object, b: object, path: str, tol: float, out: list[Difference]) -> None:
    if isinstance(a, bool) or isinstance(b, bool) or not (isinstance(a, int | float) and isinstance(b, int | float)):
        if type(a) is not type(b):
            out.append(Difference(path, _short(a), _short(b)))
            return
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key in WALL_CLOCK_KEYS:
                continue
            if key not in a or key not in b:
                out.append(Difference(f"{path}/{key}", _short(a.get(key, "<missing>")),
                                      _short(b.get(key, "<missing>"))))
            else:
                _walk(a[key], b[key], f"{path}/{key}", tol, out)
    elif isinstance(a, list):
        if len(a) != len(b):
            out.append(Difference(f"{path}[len]", str(len(a)), str(len(b))))
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, f"{path}[{i}]", tol, out)
    elif isinstance(a, int | float) and not isinstance(a, bool):
        if not _close(float(a), float(b), tol):
            out.append(Difference(path, repr(a), repr(b)))
    elif a != b:
        out.append(Difference(path, _short(a), _short(b)))


def differences(a: dict, b: dict, *, tol: float = 1e-6) -> tuple[list[Difference], list[int]]:
    """Every number or string of ``a`` that differs from ``b``, wall-clock measurements aside.

    Numbers are equal when ``|x − y| ≤ tol · max(1, |x|, |y|)`` (both NaN counts as equal).

    Returns:
        (differences, skipped claims): the claims in :data:`WALL_CLOCK_CLAIMS` present in
        both results are compared only in their deterministic fields (id, claim text).
    """
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise TypeError(f"results must be dicts (a results.json); got {type(a).__name__}, {type(b).__name__}")
    a, b, skipped = dict(a), dict(b), []
    va, vb = a.pop("verdicts", []), b.pop("verdicts", [])
    out: list[Difference] = []
    _walk(a, b, "", tol, out)
    by_id_a, by_id_b = {v["claim_id"]: v for v in va}, {v["claim_id"]: v for v in vb}
    for cid in sorted(set(by_id_a) | set(by_id_b)):
        if cid not in by_id_a or cid not in by_id_b:
            out.append(Difference(f"/verdicts[claim {cid}]", "present" if cid in by_id_a else "<missing>",
                                  "present" if cid in by_id_b else "<missing>"))
        elif cid in WALL_CLOCK_CLAIMS:
            skipped.append(cid)
            _walk(by_id_a[cid]["claim"], by_id_b[cid]["claim"], f"/verdicts[claim {cid}]/claim", tol, out)
        else:
            _walk(by_id_a[cid], by_id_b[cid], f"/verdicts[claim {cid}]", tol, out)
    return out, skipped


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m moescope.lab.compare A/results.json B/results.json", file=sys.stderr)
        return 2
    a, b = (json.loads(Path(p).read_text(encoding="utf-8")) for p in argv)
    diffs, skipped = differences(a, b)
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s) beyond 1e-6; wall-clock keys and claim(s) {skipped} not compared")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
