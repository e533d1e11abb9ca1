"""``python -m moescope.lab.recheck``: every verdict recomputed from its stored raw values."""

import copy
import json

from moescope.lab.claims import c05_sparse_compute, c15_quality_compute
from moescope.lab.recheck import main, recheck


def _seeded(name, values, objective="causal"):
    return {(name if i == 0 else f"{name}-seed{i}"): {"val_loss": v, "objective": objective, "params_active": 100,
                                                      "params_total": 400} for i, v in enumerate(values)}


def _results() -> dict:
    runs = {**_seeded("top2", [4.0, 4.02, 3.99]), **_seeded("dense-active", [4.2, 4.1, 4.25]),
            **_seeded("dense-total", [3.9] * 3), **_seeded("switch-top1", [4.1] * 3),
            **_seeded("soft-moe", [5.4, 5.5, 5.45], "masked"), **_seeded("dense-masked", [5.5, 5.45, 5.6], "masked")}
    m = c05_sparse_compute.measure(hidden=16, intermediate=8, tokens=16, repeats=1)
    verdicts = [c05_sparse_compute.evaluate(m, runs), c15_quality_compute.evaluate(runs, {"combine_entropy": 0.9})]
    return json.loads(json.dumps({"verdicts": [v.to_dict() for v in verdicts]}))


def test_recheck_agrees_with_the_report_written_by_the_lab():
    assert recheck(_results()) == ([], [])


def test_an_altered_raw_value_is_caught(tmp_path, capsys):
    res = _results()
    bad = copy.deepcopy(res)
    bad["verdicts"][0]["evidence"][0]["values"][1] = -0.5        # one seed's loss difference, changed
    problems, _ = recheck(bad)
    assert any("claim 5" in p and "key number" in p for p in problems)
    flipped = copy.deepcopy(res)
    flipped["verdicts"][1]["verdict"] = "supported" if res["verdicts"][1]["verdict"] != "supported" else "inconclusive"
    assert any("the report says" in p for p in recheck(flipped)[0])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(bad))
    assert main([str(path)]) == 1 and "disagreement" in capsys.readouterr().out
    path.write_text(json.dumps(res))
    assert main([str(path)]) == 0 and "all agree" in capsys.readouterr().out


def test_claims_without_evidence_are_listed_not_silently_passed():
    res = _results()
    res["verdicts"].append({"claim_id": 1, "verdict": "supported", "key": {"value": 1.0}, "evidence": []})
    assert recheck(res) == ([], [1])
