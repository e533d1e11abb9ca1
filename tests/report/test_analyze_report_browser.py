"""The analyze report as a person sees it: headless Chromium, offline, no console errors; the text coloured by
expert has one span per token, follows the layer selector and shows the weights on hover; every plotly
figure is drawn; the vocabulary tables show decoded tokens."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import tiny_checkpoints
from browser import chromium, console_errors, needs_chromium

from moescope.analysis.analyze import AnalyzeConfig, Source, analyze
from moescope.report.analyze import write_analyze_report

pytestmark = needs_chromium
TEXT = "def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. 12 + 30 = 42.\n" * 12


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze")
    path = tiny_checkpoints.save("mixtral", out / "ckpt", seed=0)
    res = analyze(AnalyzeConfig(path=path, sources=(Source("code", TEXT, "code"), Source("prose", TEXT[::-1], "prose")),
                                seq_len=64, batch_size=2, weights=False, activity_draws=0, text_tokens=64))
    return out, write_analyze_report(res, out / "report")["report"], res


def test_analyze_report_in_headless_chromium(report):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out, path, res = report
    with chromium() as driver:
        driver.get(path.as_uri())
        assert console_errors(driver) == []
        sections = driver.find_elements(By.CSS_SELECTOR, "section.coloured")
        assert len(sections) == len(res["samples"]) == 2
        for sec, sample in zip(sections, res["samples"], strict=True):
            spans = sec.find_elements(By.CSS_SELECTOR, ".text span")
            assert len(spans) == len(sample["tokens"]) and sec.is_displayed()
            layers = list(sample["text"])
            select = Select(sec.find_element(By.CSS_SELECTOR, "select.layer"))
            assert [o.text for o in select.options] == [str(layer) for layer in layers]
            for layer in layers:
                select.select_by_value(str(layer))
                span = sec.find_elements(By.CSS_SELECTOR, ".text span")[3]
                experts, weights = sample["text"][layer]["experts"][3], sample["text"][layer]["weights"][3]
                assert span.get_attribute("title").endswith(
                    ", ".join(f"e{e} {w:.3f}" for e, w in zip(experts, weights, strict=True)))
                firsts = [row[0] for row in sample["text"][layer]["experts"]]
                legend = sec.find_elements(By.CSS_SELECTOR, ".legend span")
                assert len(legend) == len(set(firsts))
        plots = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
        assert plots and all(p.size["height"] > 100 for p in plots)
        assert "Vocabulary specialisation" in driver.find_element(By.TAG_NAME, "body").text
        assert console_errors(driver) == []
        assert driver.save_screenshot(str(out / "report.png"))
