"""The curvature experiment and its report: files, strict JSON, computed sentences, claim 16's verdict."""

import copy
import html as htmllib
import json
import re

import networkx as nx
import pytest

from moescope.lab.curvature import CLAIM16_MAX_RATIO, CurvatureConfig, claim16, load_graph, run_curvature
from moescope.report.curvature import FIGURES, write_curvature_report

SMALL = CurvatureConfig(graphs=("tree", "cycle"), steps=40, restarts=2, sarkar_eps=(0.25,), sarkar_max_depth=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    results = run_curvature(SMALL)
    return results, write_curvature_report(results, tmp_path_factory.mktemp("curvature"))


def test_files_and_embedded_figures(written):
    results, paths = written
    for name in FIGURES:
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["report"].read_text()
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == len(FIGURES)
    assert "http://" not in html and "https://" not in html            # works offline, no CDN
    text = htmllib.unescape(html)
    for claim in results["claims"]:
        assert claim["sentence"] in text
    assert "Claim 16." in text and results["claims"][0]["verdict"] in text
    assert "0.1483" in text and "0.0321" in text                       # Gu et al.'s numbers beside ours


def test_results_json_is_strict_and_complete(written):
    results, paths = written
    loaded = json.loads(paths["results"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert loaded == json.loads(json.dumps(results))
    assert [g["name"] for g in loaded["graphs"]] == ["tree", "cycle"]
    for g in loaded["graphs"]:
        assert [r["signature"] for r in g["rows"]] == ["E3", "H3", "S3", "H2xS1"]
        assert len(g["rows"][0]["restart_avg_distortions"]) == 2
    assert loaded["claims"][0]["id"] == 16
    assert loaded["numerics"]["float32"]["max_dist0"] == pytest.approx(17.3287, abs=1e-4)
    assert loaded["numerics"]["float64"]["max_dist0"] == pytest.approx(37.4299, abs=1e-4)
    assert loaded["sarkar"]["figure"]["worst_exact"] <= 1 + SMALL.figure_eps


def _fake(h: list[float], e: list[float], *, is_tree: bool = True) -> dict:
    rows = [{"signature": "E3", "avg_distortion": e[0], "restart_avg_distortions": e, "gu": 0.1483},
            {"signature": "H3", "avg_distortion": h[0], "restart_avg_distortions": h, "gu": 0.0321}]
    return {"config": {"dim": 3}, "graphs": [{"name": "tree", "n": 40, "is_tree": is_tree, "rows": rows}]}


@pytest.mark.parametrize(("h", "e", "verdict"), [
    ([0.035, 0.04], [0.148, 0.15], "supported"),
    ([0.10, 0.16], [0.148, 0.15], "inconclusive"),      # 0.68× but one H restart is worse than every E one
    ([0.12, 0.12], [0.148, 0.15], "inconclusive"),      # 0.81×: not a cut of a quarter
    ([0.15, 0.16], [0.148, 0.15], "not supported"),
])
def test_claim16_verdict_from_the_numbers(h, e, verdict):
    out = claim16(_fake(h, e))
    assert out["verdict"] == verdict
    assert out["threshold"] == CLAIM16_MAX_RATIO
    assert out["numbers"]["ratio"] == pytest.approx(h[0] / e[0])
    assert out["numbers"]["gu_ratio"] == pytest.approx(0.0321 / 0.1483)
    assert "Euclidean space of the same dimension" in out["null"] and out["claim"] in out["title"]
    assert verdict in out["sentence"]


def test_claim16_without_a_tree_is_inconclusive():
    out = claim16(_fake([0.1], [0.2], is_tree=False))
    assert out["verdict"] == "inconclusive" and "no tree" in out["reason"]


def test_claim16_on_a_real_run_reads_the_tree_row(written):
    results, _ = written
    out = claim16(copy.deepcopy(results))
    tree = next(g for g in results["graphs"] if g["name"] == "tree")
    h = next(r for r in tree["rows"] if r["signature"] == "H3")
    assert out["numbers"]["H"] == h["avg_distortion"] and out == results["claims"][0]


def test_graph_from_a_file(tmp_path):
    path = tmp_path / "wheel.edgelist"
    nx.write_edgelist(nx.wheel_graph(9), path, data=False)
    name, g, desc = load_graph(str(path))
    assert name == "wheel" and g.number_of_nodes() == 9 and "9 nodes" in desc
    out = run_curvature(CurvatureConfig(graphs=(str(path),), steps=5, restarts=1, sarkar_eps=(1.0,),
                                        sarkar_max_depth=1))
    assert out["graphs"][0]["gu_winner"] is None and out["graphs"][0]["ranking_holds"] is None
    assert out["claims"][0]["verdict"] == "inconclusive"


def test_bad_graph_files(tmp_path):
    with pytest.raises(ValueError, match="or an existing file; got 'nope'"):
        load_graph("nope")
    bad = tmp_path / "g.xyz"
    bad.write_text("0 1\n")
    with pytest.raises(ValueError, match="cannot read g.xyz"):
        load_graph(str(bad))
    split = tmp_path / "split.edgelist"
    split.write_text("0 1\n1 2\n3 4\n")
    with pytest.raises(ValueError, match="must be connected"):
        load_graph(str(split))
    big = tmp_path / "big.edgelist"
    nx.write_edgelist(nx.path_graph(50), big, data=False)
    with pytest.raises(ValueError, match="has 50 nodes; at most 20"):
        load_graph(str(big), max_nodes=20)
    with pytest.raises(ValueError, match="dim must be an integer >= 2"):
        CurvatureConfig(dim=1)
    with pytest.raises(ValueError, match="or an existing graph file"):
        CurvatureConfig(graphs=("tree", "nope.edgelist"))
