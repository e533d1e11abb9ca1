"""The lab report: one table of verdicts, one section per claim, every figure embedded.

Renders what :func:`moescope.lab.run.run_lab` measured — verdicts as dicts and figures as
PNG bytes — into ``report.html`` (self-contained, offline, no CDN), ``results.json`` and
the figure files; and the verdict table for the terminal. It measures nothing: each
condition's sentence and figure are re-assessed from the raw evidence the verdict stored
(:mod:`moescope.report.evidence`), with the same :func:`moescope.stats.assess` that decided it.

Three verdicts are findings (supported, not supported, inconclusive); "holds by construction"
is not, and is never counted with them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from moescope.lab.verdict import BY_CONSTRUCTION, VERDICTS
from moescope.report.evidence import describe, evidence_figures, figure_name, interval_text
from moescope.report.writer import Figure, write_report

_STYLE = {"supported": "green", "not supported": "red", "inconclusive": "yellow", BY_CONSTRUCTION: "blue"}


def _anchor(figure: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", figure.lower()).strip("-")


def _css(verdict: str) -> str:
    return verdict.replace(" ", "-")


def key_text(key: dict) -> str:
    """``name = 0.89 [0.84, 0.93] (95%) unit``: the key number with the interval its rule read."""
    iv = interval_text(key.get("interval"), key.get("level"))
    unit = key.get("unit") or ""
    sep = ", " if iv.startswith("no ") else " "
    return f"{key['name']} = {key['value']:.4g}" + (f" {unit}" if unit else "") + (f"{sep}{iv}" if iv else "")


def finding_counts(verdicts: list[dict]) -> dict[str, int]:
    """How many verdicts are each finding (supported, not supported, inconclusive), and how many hold by
    construction — the latter kept apart, never a finding."""
    seen = Counter(v["verdict"] for v in verdicts)
    return {kind: seen.get(kind, 0) for kind in (*VERDICTS, BY_CONSTRUCTION)}


def counts_text(verdicts: list[dict]) -> str:
    """``2 supported / 1 not supported / 1 inconclusive (findings)``, plus the claims holding by construction."""
    c = finding_counts(verdicts)
    line = " / ".join(f"{c[k]} {k}" for k in VERDICTS) + " (findings)"
    return line + (f"; {c[BY_CONSTRUCTION]} {BY_CONSTRUCTION} (not a finding)" if c[BY_CONSTRUCTION] else "")


def _json_ready(obj: object) -> object:
    """±inf and nan (a one-replicate interval) as None: JSON has neither, and None reads as unbounded."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_ready(x) for k, x in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(x) for x in obj]
    return obj


def write_lab_report(results: dict, figures: dict[str, bytes], out_dir: str | Path) -> dict[str, Path]:
    """Write the figures, ``results.json`` and ``report.html``; return the paths by kind.

    Args:
        results: JSON-ready dict with ``verdicts`` (list of Verdict dicts) and whatever else
            the run measured (runs, provenance, timings).
        figures: PNG bytes by file name; a verdict's ``figures`` name entries of it. Evidence
            figures (:func:`moescope.report.evidence.figure_name`) it lacks are drawn here.
    """
    verdicts = results["verdicts"]
    missing = sorted({f for v in verdicts for f in v["figures"]} - set(figures))
    if missing:
        raise ValueError(f"verdicts name figures that were not produced: {missing}")
    figures = {**figures, **evidence_figures(verdicts, skip=set(figures))}
    evidence = {v["claim_id"]: [{**describe(ev), "figure": figure_name(v["claim_id"], i)}
                                for i, ev in enumerate(v.get("evidence") or ())] for v in verdicts}
    return write_report(
        results, {name: Figure(png) for name, png in figures.items()}, "lab.html.j2", out_dir,
        saved=_json_ready(results),
        context={"anchor": _anchor, "evidence": evidence, "key_text": key_text, "counts": finding_counts(verdicts),
                 "counts_text": counts_text(verdicts), "css": _css,
                 "timing_text": timing_text(results), "by_construction": BY_CONSTRUCTION,
                 "constructed": [v for v in verdicts if v.get("construction") or v["verdict"] == BY_CONSTRUCTION]})


def _figure_makers(data: dict) -> dict[str, tuple[str, object]]:
    """Each figure name the experiments in ``data`` can draw: (the experiment it reads, its drawing function)."""
    import importlib

    from moescope.lab.run import CURVED_SYSTEMS
    from moescope.report import attack, curvature, lab_training, sphere

    def curved(name: str):
        specs = importlib.import_module(f"moescope.report.{name}_figures").FIGURES
        return lambda d: {n: fn for n, (_, fn) in specs.items()}

    by_experiment = {
        "sphere": lambda d: {n: fn for n, (_, fn) in sphere.FIGURES.items()},
        "digits": lambda d: {n: fn for n, (_, fn) in attack.figures_for(d).items()},
        "curvature": lambda d: {n: fn for n, (_, fn) in curvature.FIGURES.items()},
        "training": lambda d: dict(lab_training.FIGURES),     # claims 6-15 on the lab's runs
        "checkpoint": lambda d: dict(lab_training.FIGURES),   # or 6 and 10-14 on a given checkpoint
        **{name: curved(name) for name in CURVED_SYSTEMS},    # claims 17-21
    }
    makers: dict[str, tuple[str, object]] = {}
    for source, figures in by_experiment.items():
        if source in data:
            makers.update({name: (source, fn) for name, fn in figures(data[source]).items()})
    return makers


def lab_figures(results: dict) -> dict[str, bytes]:
    """Draw every figure the verdicts name, from the experiments' own data, and each condition's
    evidence figure, from the raw values the verdict stored."""
    data = results["data"]
    makers = _figure_makers(data)
    wanted = {f for v in results["verdicts"] for f in v["figures"]}
    drawn = {name: fn(data[source]) for name, (source, fn) in makers.items() if name in wanted}
    return {**drawn, **evidence_figures(results["verdicts"])}


def timing_text(results: dict) -> str:
    """The wall-clock time of each experiment the run needed, slowest first (reported, never deciding)."""
    timings = sorted(results.get("timings", {}).items(), key=lambda kv: -kv[1])
    return "Time per experiment: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings)


def verdict_table(verdicts: list[dict]) -> Table:
    """The verdicts as a rich table for the terminal, the count of findings above it."""
    table = Table(title=f"moescope lab — the lecture's claims, measured\n{counts_text(verdicts)}")
    for col in ("#", "claim", "verdict", "key number"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        style = _STYLE.get(v["verdict"], "white")
        table.add_row(str(v["claim_id"]), escape(v["claim"]), f"[{style}]{escape(v['verdict'])}[/]",
                      escape(key_text(v["key"])))
    return table
