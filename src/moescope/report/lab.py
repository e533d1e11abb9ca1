"""The lab report: one table of verdicts, one section per claim, every figure embedded.

Renders what :func:`moescope.lab.run.run_lab` measured — verdicts as dicts and figures as
PNG bytes — into ``report.html`` (self-contained, offline, no CDN), ``results.json`` and
the figure files; and the verdict table for the terminal. Computes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
from rich.table import Table

from moescope import __version__
from moescope._files import write_bytes_atomic, write_json_atomic, write_text_atomic
from moescope.report.figures import data_uri

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("moescope.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)
_STYLE = {"supported": "green", "not supported": "red", "inconclusive": "yellow"}


def _anchor(figure: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", figure.lower()).strip("-")


def write_lab_report(results: dict, figures: dict[str, bytes], out_dir: str | Path) -> dict[str, Path]:
    """Write the figures, ``results.json`` and ``report.html``; return the paths by kind.

    Args:
        results: JSON-ready dict with ``verdicts`` (list of Verdict dicts) and whatever else
            the run measured (runs, provenance, timings).
        figures: PNG bytes by file name; a verdict's ``figures`` name entries of it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {name: write_bytes_atomic(out / name, png) for name, png in figures.items()}
    uris = {name: data_uri(png) for name, png in figures.items()}
    missing = sorted({f for v in results["verdicts"] for f in v["figures"]} - set(uris))
    if missing:
        raise ValueError(f"verdicts name figures that were not produced: {missing}")
    written["results"] = write_json_atomic(out / "results.json", results)
    html = _TEMPLATES.get_template("lab.html.j2").render(
        results=results, uris=uris, anchor=_anchor, version=__version__)
    written["report"] = write_text_atomic(out / "report.html", html)
    return written


def lab_figures(results: dict) -> dict[str, bytes]:
    """Draw every figure the verdicts name, from the experiments' own data."""
    from moescope.report import attack, curvature, lab_training, sphere

    data = results["data"]
    makers: dict[str, tuple[str, object]] = {}
    if "sphere" in data:
        makers.update({name: ("sphere", fn) for name, (_, fn) in sphere.FIGURES.items()})
    if "digits" in data:
        makers.update({name: ("digits", fn) for name, (_, fn) in attack.figures_for(data["digits"]).items()})
    if "curvature" in data:
        makers.update({name: ("curvature", fn) for name, (_, fn) in curvature.FIGURES.items()})
    for source in ("training", "checkpoint"):  # claims 6-15 on the lab's runs, or 6 and 10-14 on a checkpoint
        if source in data:
            makers.update({name: (source, fn) for name, fn in lab_training.FIGURES.items()})
    wanted = {f for v in results["verdicts"] for f in v["figures"]}
    return {name: fn(data[source]) for name, (source, fn) in makers.items() if name in wanted}


def verdict_table(verdicts: list[dict]) -> Table:
    """The verdicts as a rich table for the terminal."""
    table = Table(title="moescope lab — the lecture's claims, measured")
    for col in ("#", "claim", "verdict", "key number"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        key = v["key"]
        unc = f" ± {key['uncertainty']:.2g}" if key["uncertainty"] is not None else ""
        table.add_row(str(v["claim_id"]), v["claim"], f"[{_STYLE[v['verdict']]}]{v['verdict']}[/]",
                      f"{key['name']} = {key['value']:.4g}{unc}")
    return table
