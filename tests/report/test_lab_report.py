"""The lab report from hand-made verdicts in the new format: intervals (one infinite), evidence
re-assessed and drawn as embedded figures, statements holding by construction kept apart."""

import base64
import json
import math
import re

import pytest
from rich.console import Console

from moescope.lab.verdict import BY_CONSTRUCTION, KeyNumber, Verdict, judge
from moescope.report.evidence import describe, evidence_figure, figure_name, interval_text
from moescope.report.figures import new_figure, png_bytes
from moescope.report.lab import counts_text, key_text, lab_figures, verdict_table, write_lab_report
from moescope.stats import Evidence

PNG = b"\x89PNG"


def _ratio_evidence() -> Evidence:
    # 3 layers, 50 draws each: observed overlap about 0.8x its null -> the ratio lies well below 1
    null = [[1.0 + 0.02 * ((7 * i + 3 * layer) % 11 - 5) for i in range(50)] for layer in range(3)]
    return Evidence("overlap / null", "permutation_ratio", (0.8, 0.82, 0.79), reference=1.0, margin=0.05,
                    side="less", null=tuple(map(tuple, null)), unit="layer")


def _shift_evidence() -> Evidence:
    null = [[0.01 * ((5 * i + layer) % 9 - 4) for i in range(40)] for layer in range(2)]
    return Evidence("NMI − null", "permutation_shift", (0.3, 0.25), reference=0.0, margin=0.05, side="greater",
                    null=tuple(map(tuple, null)), unit="layer")


def _verdicts() -> list[dict]:
    t = Evidence("loss gap", "t", (0.12, 0.15, 0.11), reference=0.0, margin=0.02, side="greater", unit="seed")
    one = Evidence("load CV", "t", (0.4,), reference=0.0, margin=0.1, side="greater", unit="seed")
    paired = Evidence("val loss", "paired_t", (2.1, 2.0, 2.2), against=(2.3, 2.25, 2.4), reference=0.0,
                      margin=0.05, side="less", unit="seed")
    boot = Evidence("top-1 agreement", "bootstrap", tuple(0.6 + 0.01 * (i % 7) for i in range(30)),
                    reference=0.125, margin=0.05, side="greater", unit="window")
    j6, j8, j13 = judge([_ratio_evidence(), t]), judge([one]), judge([_shift_evidence(), paired, boot])
    common = {"measured": "measured sentence.", "baseline": "a null.", "rule": "the rule."}
    return [
        Verdict(claim_id=3, claim="Almost all of the sphere lies near the equator",
                lecture="赤道集中現象: 極にはほとんど誰もいない",
                verdict="supported", key=KeyNumber("share within |x₁| ≤ 0.1", 0.9999, (0.9998, 1.0), 0.99),
                construction=("The polar cap x₁ ≥ 0.5 holds 10^-87 of S^999: a theorem, not a measurement.",),
                figures=("equator_band.png",), **common).to_dict(),
        Verdict(claim_id=5, claim="Sparse activation saves compute", lecture="計算効率: 8つのExpertのうち2つだけ活性化",
                verdict=BY_CONSTRUCTION, key=KeyNumber("active FLOP share", 0.26),
                construction=("top-2 of 8 experts run 2/8 of the expert FLOPs per token.",), **common).to_dict(),
        Verdict(claim_id=6, claim="Experts learn different subspaces", lecture="Expertは異なる部分空間を学ぶ",
                verdict=j6.verdict, key=j6.key, evidence=j6.evidence, **common).to_dict(),
        Verdict(claim_id=8, claim="Without balancing, routing collapses", lecture="ルーティングが崩壊する",
                verdict=j8.verdict, key=j8.key, evidence=j8.evidence, **common).to_dict(),
        Verdict(claim_id=13, claim="Experts specialise by domain", lecture="ドメインごとに専門化",
                verdict=j13.verdict, key=j13.key, evidence=j13.evidence, **common).to_dict(),
    ]


@pytest.fixture(scope="module")
def results():
    return {"profile": "quick", "seed": 0, "seconds": 1.0, "machine": "test", "data": {},
            "verdicts": _verdicts()}


@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    fig, _ = new_figure()
    figures = {**lab_figures(results), "equator_band.png": png_bytes(fig)}
    return write_lab_report(results, figures, tmp_path_factory.mktemp("lab"))


def test_interval_text_handles_every_spelling_of_no_interval():
    assert interval_text((0.84, 0.93), 0.95) == "[0.84, 0.93] (95%)"
    assert interval_text(None, None) == ""
    for spelled in ((-math.inf, math.inf), [None, None], (float("-inf"), 1.0)):
        assert interval_text(spelled, 0.95) == "no interval (one replicate)"
    assert key_text({"name": "r", "value": 0.8912, "interval": [0.84, 0.93], "level": 0.95, "unit": ""}) \
        == "r = 0.8912 [0.84, 0.93] (95%)"


def test_counts_never_count_construction(results):
    line = counts_text(results["verdicts"])
    kinds = [v["verdict"] for v in results["verdicts"]]
    findings = f"{kinds.count('supported')} supported / {kinds.count('not supported')} not supported / " \
               f"{kinds.count('inconclusive')} inconclusive (findings)"
    assert line.startswith(findings) and "1 holds by construction (not a finding)" in line


def test_lab_figures_draw_every_evidence(results):
    names = {figure_name(v["claim_id"], i) for v in results["verdicts"] for i in range(len(v["evidence"]))}
    figures = lab_figures(results)
    assert set(figures) == names and len(names) == 6
    assert all(png[:4] == PNG for png in figures.values())


def test_describe_matches_the_verdict(results):
    v13 = next(v for v in results["verdicts"] if v["claim_id"] == 13)
    shift = describe(v13["evidence"][0])
    assert shift["verdict"] == "supported" and shift["p_value"] is not None
    assert shift["effect"] == pytest.approx(v13["key"]["value"])
    assert "permutation p = " in shift["sentence"] and "reference 0 ± margin 0.05" in shift["sentence"]


def test_unknown_method_still_drawn():
    ev = {**_ratio_evidence().to_dict(), "method": "permutation_newer"}
    d = describe(ev)
    assert d["verdict"] is None and "not re-assessed" in d["sentence"]
    assert evidence_figure(1, 0, ev, d)[:4] == PNG


def test_report_html(written, results):
    html = written["report"].read_text()
    assert "uncertainty" not in html
    for v in results["verdicts"]:
        assert f'id="claim-{v["claim_id"]}"' in html
    assert "赤道集中現象" in html
    assert "share within |x₁| ≤ 0.1 = 0.9999 [0.9998, 1] (99%)" in html
    assert "no interval (one replicate)" in html                     # claim 8: one seed
    v6 = results["verdicts"][2]
    assert key_text(v6["key"]) in html and re.search(r"\[0\.\d+, 0\.\d+\] \(95%\)", key_text(v6["key"]))
    # evidence figures embedded as data URIs, and written beside the report
    for v in results["verdicts"]:
        for i in range(len(v["evidence"])):
            name = figure_name(v["claim_id"], i)
            png = (written["report"].parent / name).read_bytes()
            assert png[:4] == PNG and f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
    assert html.count('class="evidence-figure"') == 6 and 'src="http' not in html
    # construction: its own section after the findings, every sentence there, claim 5 listed
    section = html[html.index('id="construction"'):]
    assert html.index('id="claim-13"') < html.index('id="construction"')
    assert "not findings" in section and "10^-87" in section and "2/8 of the expert FLOPs" in section
    assert 'id="construction-5"' in section and 'id="construction-3"' in section


def test_results_json_has_no_infinity(written, results):
    text = written["results"].read_text()
    assert "Infinity" not in text and "NaN" not in text
    back = json.loads(text)["verdicts"]
    assert [v["claim_id"] for v in back] == [v["claim_id"] for v in results["verdicts"]]
    v8 = next(v for v in back if v["claim_id"] == 8)
    assert v8["key"]["interval"] == [None, None]


def test_report_reads_back_its_own_results_json(written, tmp_path):
    """A results.json written with None for ±inf renders again: the same intervals, the same sentences."""
    res = json.loads(written["results"].read_text())
    again = write_lab_report(res, {"equator_band.png": (written["report"].parent / "equator_band.png").read_bytes()},
                             tmp_path)
    html = again["report"].read_text()
    assert "no interval (one replicate)" in html and html.count('class="evidence-figure"') == 6


def test_verdict_table_renders(results):
    console = Console(record=True, width=200)
    console.print(verdict_table(results["verdicts"]))
    text = console.export_text()
    assert "holds by construction" in text and "(findings)" in text
    assert "no interval (one replicate)" in text and "(95%)" in text and "uncertainty" not in text
