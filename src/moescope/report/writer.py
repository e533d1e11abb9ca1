"""The one report writer: figure files, ``results.json`` and ``report.html``, each written atomically.

Every command's report is the same body — draw the figures, write them, write the results,
render a jinja2 template — so it lives here once; a report module only declares its figures
(:data:`FigureSpecs`) and its template's extra context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from moescope import __version__
from moescope._files import write_bytes_atomic, write_json_atomic, write_text_atomic
from moescope.models.sizes import format_size
from moescope.report.figures import data_uri

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("moescope.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)
TEMPLATES.filters["size"] = format_size  # 1536 * 2**20 -> "1.50 GiB"

FigureSpecs = Mapping[str, tuple[str, Callable[[dict], bytes]]]
"""Figures by file name: ``(caption, draw)``, where ``draw(data)`` returns PNG bytes."""

_GIVEN = ("results", "figures", "uris", "version")  # what every template is handed


@dataclass(frozen=True)
class Figure:
    """One PNG figure of a report: its bytes and the caption shown under it (empty: none)."""

    png: bytes
    caption: str = ""


def draw_figures(specs: FigureSpecs, data: dict) -> dict[str, Figure]:
    """Draw every figure of ``specs`` from ``data``, in the order ``specs`` lists them."""
    return {name: Figure(draw(data), caption) for name, (caption, draw) in specs.items()}


def write_report(
    results: dict,
    figures: Mapping[str, Figure],
    template: str,
    out: str | Path,
    *,
    context: Mapping[str, object] | None = None,
    saved: object | None = None,
) -> dict[str, Path]:
    """Write each figure as ``out/NAME``, then ``out/results.json``, then ``out/report.html``.

    The folder is made if missing; files already in it are replaced, each atomically
    (:mod:`moescope._files`), so a reader never sees half a file.

    Args:
        results: what the command measured; the template reads it as ``results``.
        figures: PNG figures by file name. The template reads them as ``figures`` (a list of
            ``{"name", "caption", "uri"}`` in this order) and as ``uris`` (data URI by name).
        template: a file name under ``moescope/report/templates``.
        out: the report's folder.
        context: anything else the template reads (formatters, inlined scripts); it may not
            reuse the names ``results``, ``figures``, ``uris`` or ``version``.
        saved: what ``results.json`` holds when it differs from ``results`` (e.g. with
            non-finite numbers made JSON-ready); default ``results``.

    Returns:
        The paths written, by kind: one per figure name, then "results" and "report".
    """
    context = dict(context or {})
    clash = sorted(set(context) & set(_GIVEN))
    if clash:
        raise ValueError(f"context may not reuse the names {list(_GIVEN)}; got {clash}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = {name: write_bytes_atomic(folder / name, fig.png) for name, fig in figures.items()}
    uris = {name: data_uri(fig.png) for name, fig in figures.items()}
    written["results"] = write_json_atomic(folder / "results.json", results if saved is None else saved)
    html = TEMPLATES.get_template(template).render(
        results=results, version=__version__, uris=uris,
        figures=[{"name": name, "caption": fig.caption, "uri": uris[name]} for name, fig in figures.items()],
        **context,
    )
    written["report"] = write_text_atomic(folder / "report.html", html)
    return written
