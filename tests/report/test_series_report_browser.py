"""The checkpoint-series report as a person sees it: headless Chromium, offline, no console errors, every curve
drawn with one point per checkpoint, and the summary table one row per checkpoint in step order."""

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import tiny_checkpoints
from browser import chromium, console_errors, needs_chromium

from moescope.analysis.analyze import Source
from moescope.analysis.series import SeriesConfig, checkpoint_series
from moescope.report.series import series_figures, write_series_report

pytestmark = needs_chromium
TEXT = "def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. 12 + 30 = 42.\n" * 6


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    tiny_checkpoints.save("qwen3_moe", root / "run" / "step_5", seed=2)
    tiny_checkpoints.save("qwen3_moe", root / "run" / "step_50", seed=3)
    shutil.copytree(root / "run" / "step_50", root / "run" / "step_500")
    res = checkpoint_series(SeriesConfig(paths=(root / "run",), sources=(Source("code", TEXT, "code"),
                                                                           Source("prose", TEXT[::-1], "prose")),
                                         seq_len=32, max_tokens=300, draws=40))
    return root, write_series_report(res, root / "report")["report"], res


def test_series_report_in_headless_chromium(report):
    from selenium.webdriver.common.by import By

    root, path, res = report
    assert [e["step"] for e in res["series"]] == [5, 50, 500]
    with chromium() as driver:
        driver.get(path.as_uri())
        assert console_errors(driver) == []
        plots = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
        assert len(plots) == len(series_figures(res))
        for plot in plots:
            assert plot.is_displayed() and plot.size["height"] > 100 and plot.size["width"] > 200
        points = driver.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot')).map("
            "p => p.data.filter(t => t.type === 'scatter').map(t => t.x.length))")
        assert all(n == 3 for per_plot in points for n in per_plot) and any(points)
        body = driver.find_element(By.TAG_NAME, "body").text
        first = [body.find(label) for label in ("step_5", "step_50", "step_500")]
        assert all(i >= 0 for i in first) and first == sorted(first)
        assert console_errors(driver) == []
        assert driver.save_screenshot(str(root / "report.png"))
