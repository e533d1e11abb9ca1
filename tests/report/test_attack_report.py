"""The attack report: every figure embedded, strict results.json, the computed sentences shown."""

from __future__ import annotations

import html as htmllib
import json
import re

import pytest

from moescope.adversarial.experiment import AttackConfig, run_experiment
from moescope.report.attack import figures_for, write_attack_report

SMALL = {"attack_points": 30, "boundary_points": 4, "directions": 4, "examples": 3,
         "linear_dims": (10, 100), "linear_points": 1, "linear_directions": 10, "linearity_dims": (10, 100)}
DIGITS = {**SMALL, "sizes": (8, 16), "epochs": 2}
SPHERES = {**SMALL, "sphere_dims": (8, 16), "sphere_steps": 60, "sphere_checkpoints": (30,), "sphere_hidden": 16,
           "mu_samples": 2000, "sphere_attack_points": 8}


@pytest.fixture(scope="module", params=["digits", "spheres"])
def written(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    overrides = DIGITS if request.param == "digits" else SPHERES
    results = run_experiment(AttackConfig(dataset=request.param, attack="pgd", eps=(0.0, 0.05, 0.2), seed=1,
                                          **overrides))
    written = write_attack_report(results, out)
    assert written["report"] == out / "report.html" and written["results"] == out / "results.json"
    return results, out


def test_files_and_embedded_figures(written):
    results, out = written
    names = figures_for(results)
    expected = {"accuracy_vs_eps.png", "ratio_vs_d.png", "sweep_and_linearity.png"}
    expected |= {"examples.png"} if results["dataset"] == "digits" else {"spheres.png"}
    assert set(names) == expected
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == len(names)
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN
    text = htmllib.unescape(html)
    for s in results["sentences"]:
        assert s["sentence"] in text


def test_results_json_is_strict_and_equal_to_the_return_value(written):
    results, out = written
    loaded = json.loads((out / "results.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert loaded == json.loads(json.dumps(results))
    assert loaded["config"]["seed"] == 1 and loaded["eps"] == [0.0, 0.05, 0.2]
    if loaded["dataset"] == "spheres":
        assert [p["step"] for p in loaded["gilmer"]] == [30, 60]
        assert loaded["sentences"][-1]["id"] == "gilmer"
        assert loaded["norm"] == "l2"

