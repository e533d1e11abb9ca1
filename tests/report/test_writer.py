"""The one report writer: figure files, results.json and report.html, and the paths it returns."""

from __future__ import annotations

import json

import pytest

from moescope.report.writer import TEMPLATES, Figure, draw_figures, write_report

PNG = b"\x89PNG\r\n\x1a\nnot really an image"


@pytest.fixture
def template(monkeypatch):
    """A tiny template beside the real ones (the loader is swapped for a dict loader)."""
    import jinja2

    loader = jinja2.ChoiceLoader([jinja2.DictLoader({"t.html.j2": (
        "{{ version }}|{{ results.x }}|{% for f in figures %}{{ f.name }}:{{ f.caption }}:{{ f.uri == uris[f.name] }};"
        "{% endfor %}{{ extra }}")}), TEMPLATES.loader])
    monkeypatch.setattr(TEMPLATES, "loader", loader)
    return "t.html.j2"


def test_writes_figures_results_and_report_in_order(tmp_path, template):
    out = tmp_path / "new" / "report"
    written = write_report({"x": 1.5}, {"b.png": Figure(PNG, "B"), "a.png": Figure(PNG)}, template, out,
                           context={"extra": "<i>"})
    assert list(written) == ["b.png", "a.png", "results", "report"]
    assert written["results"] == out / "results.json" and written["report"] == out / "report.html"
    assert (out / "a.png").read_bytes() == PNG
    assert json.loads((out / "results.json").read_text()) == {"x": 1.5}
    html = (out / "report.html").read_text()
    assert html.split("|", 1)[1] == "1.5|b.png:B:True;a.png::True;&lt;i&gt;"  # autoescaped context


def test_saved_results_differ_from_the_rendered_ones(tmp_path, template):
    written = write_report({"x": float("inf")}, {}, template, tmp_path, context={"extra": ""}, saved={"x": None})
    assert json.loads(written["results"].read_text()) == {"x": None}
    assert "|inf|" in written["report"].read_text()


def test_context_may_not_shadow_what_the_writer_hands_over(tmp_path, template):
    with pytest.raises(ValueError, match="may not reuse the names"):
        write_report({}, {}, template, tmp_path, context={"figures": []})
    assert not any(tmp_path.iterdir())


def test_draw_figures_keeps_order_and_captions():
    specs = {"z.png": ("last", lambda d: PNG + bytes([d["n"]])), "a.png": ("first", lambda d: PNG)}
    figs = draw_figures(specs, {"n": 7})
    assert list(figs) == ["z.png", "a.png"]
    assert figs["z.png"] == Figure(PNG + b"\x07", "last")
