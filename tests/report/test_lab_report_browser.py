"""The lab report as a person sees it: headless Chromium loads it offline, no console errors,
every figure present and visible; a screenshot is saved next to the report."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser import chromium, console_errors, needs_chromium

from moescope.lab.run import LabConfig, run_lab
from moescope.report.lab import lab_figures, write_lab_report

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    res = run_lab(LabConfig(claims=(1, 2, 3, 4), seed=0, workdir=out / "work"))  # no training: seconds
    return out, write_lab_report(res, lab_figures(res), out)["report"], res


def test_report_in_headless_chromium(report):
    from selenium.webdriver.common.by import By

    out, path, res = report
    with chromium() as driver:
        driver.get(path.as_uri())
        assert console_errors(driver) == []
        images = driver.find_elements(By.CSS_SELECTOR, "figure img")
        wanted = {f for v in res["verdicts"] for f in v["figures"]}
        evidence = sum(len(v.get("evidence") or ()) for v in res["verdicts"])  # one figure per condition
        assert len(images) == sum(len(v["figures"]) for v in res["verdicts"]) + evidence and wanted
        assert len(driver.find_elements(By.CSS_SELECTOR, "figure.evidence-figure img")) == evidence
        for img in images:  # decoded, non-empty and laid out
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
            assert img.is_displayed() and img.size["width"] > 100 and img.size["height"] > 100
        rows = driver.find_elements(By.CSS_SELECTOR, "table.verdicts tr")
        assert len(rows) == len(res["verdicts"]) + 1
        assert driver.find_element(By.ID, "counts").text.startswith("Findings:")
        lecture = driver.find_element(By.CSS_SELECTOR, "#claim-1 .lecture")  # Japanese quotes render
        assert lecture.is_displayed() and "「" in lecture.text
        assert driver.save_screenshot(str(out / "report.png"))
        assert (out / "report.png").stat().st_size > 10_000
