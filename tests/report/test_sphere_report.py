"""The sphere report renders what it is handed: every figure embedded, JSON strict."""

import html as htmllib
import json
import re

import pytest

from moescope.lab.sphere_laws import SphereConfig, run_sphere
from moescope.report.sphere import FIGURES, write_sphere_report


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    results = run_sphere(SphereConfig(dims=(2, 3, 40), samples=600, points_per_query=29, seed=3))
    return results, write_sphere_report(results, tmp_path_factory.mktemp("sphere"))


def test_files_and_embedded_figures(written):
    results, paths = written
    for name in FIGURES:
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["report"].read_text()
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == len(FIGURES)
    assert "http://" not in html and "https://" not in html  # works offline, no CDN
    for claim in results["claims"]:
        assert claim["sentence"] in htmllib.unescape(html)


def test_results_json_is_strict_and_complete(written):
    results, paths = written
    loaded = json.loads(paths["results"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert loaded == json.loads(json.dumps(results))
    assert {c["id"] for c in loaded["claims"]} == {1, 2, 3}
    assert any(row["welch"] is None for row in loaded["capacity"])  # "no limit" is null, not inf
