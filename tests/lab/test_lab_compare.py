import copy
import json

import pytest

from moescope.lab.compare import differences, main


@pytest.fixture(autouse=True)
def _timed_claim_5(monkeypatch):
    """No lab claim is decided by a wall-clock time today; the mechanism is tested with a pretend one."""
    import moescope.lab.compare as compare

    monkeypatch.setattr(compare, "WALL_CLOCK_CLAIMS", frozenset({5}))


def _results() -> dict:
    return {
        "profile": "quick", "seed": 0, "seconds": 12.5, "timings": {"sphere": 1.0},
        "data": {"sphere": {"cos_sd": [0.1, 0.01], "nan": float("nan"), "label": "d=10"},
                 "training": {"runs": {"top2": {"val_loss": 3.25, "elapsed": 9.0}}}},
        "verdicts": [
            {"claim_id": 1, "claim": "orthogonal", "verdict": "supported", "key": {"value": 0.026}},
            {"claim_id": 5, "claim": "sparse", "verdict": "supported", "key": {"value": 0.19}},
        ],
    }


def test_identical_results_have_no_differences():
    diffs, skipped = differences(_results(), _results())
    assert diffs == [] and skipped == [5]


def test_a_changed_number_is_found_beyond_the_tolerance_only():
    a, b = _results(), _results()
    b["data"]["sphere"]["cos_sd"][1] = 0.01 * (1 + 1e-9)
    assert differences(a, b)[0] == []
    b["data"]["sphere"]["cos_sd"][1] = 0.0101
    (d,), _ = differences(a, b)
    assert d.path == "/data/sphere/cos_sd[1]"


def test_wall_clock_keys_and_timed_claims_are_skipped_but_not_other_verdicts():
    a, b = _results(), _results()
    b["seconds"], b["timings"]["sphere"] = 99.0, 7.0
    b["data"]["training"]["runs"]["top2"]["elapsed"] = 1.0
    a["verdicts"][0]["timing"], b["verdicts"][0]["timing"] = "runs in 0.2× the time", "runs in 0.3× the time"
    b["verdicts"][1]["verdict"], b["verdicts"][1]["key"]["value"] = "not supported", 0.7
    assert differences(a, b) == ([], [5])
    b["verdicts"][0]["verdict"] = "inconclusive"
    diffs, _ = differences(a, b)
    assert [d.path for d in diffs] == ["/verdicts[claim 1]/verdict"]


@pytest.mark.parametrize("mutate", [
    lambda r: r["data"]["sphere"].pop("label"),
    lambda r: r["data"]["sphere"]["cos_sd"].append(1.0),
    lambda r: r["verdicts"].pop(0),
    lambda r: r["data"]["sphere"].__setitem__("nan", 1.0),
    lambda r: r["data"]["sphere"].__setitem__("label", 10),
])
def test_structural_changes_are_differences(mutate):
    a, b = _results(), _results()
    mutate(b)
    assert len(differences(a, b)[0]) == 1


def test_command_line_exit_codes(tmp_path, capsys):
    a, b = _results(), copy.deepcopy(_results())
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert main([str(pa), str(pb)]) == 0
    b["data"]["training"]["runs"]["top2"]["val_loss"] = 3.0
    pb.write_text(json.dumps(b))
    assert main([str(pa), str(pb)]) == 1
    assert "/data/training/runs/top2/val_loss" in capsys.readouterr().out
    assert main([str(pa)]) == 2


def test_non_dict_input_is_a_clear_error():
    with pytest.raises(TypeError, match="results must be dicts"):
        differences([], {})
