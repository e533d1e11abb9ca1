"""The README's main command, end to end, twice: `moescope lab --profile quick` with one seed.

Slow (two full quick runs, several minutes each on 2 cores) but run in `.ci/run`: it is the
main job. The second run trains from scratch in another folder and must reproduce every
number of the first to 1e-6 (wall-clock measurements aside, see `moescope.lab.compare`).
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from moescope.lab.compare import differences
from moescope.lab.run import ALL_CLAIMS
from moescope.lab.verdict import VERDICTS


def _lab(out):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "moescope", "lab", "--profile", "quick", "--seed", "0",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the verdict table goes to stdout, progress and the closing "Report: ... in N s" line to stderr
    return proc.stdout + proc.stderr, json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    return _lab(root / "a"), _lab(root / "b"), root


@pytest.mark.slow
def test_quick_profile_tests_every_claim_and_writes_the_report(two_runs):
    (output, res), _, root = two_runs
    assert [v["claim_id"] for v in res["verdicts"]] == list(ALL_CLAIMS)
    for v in res["verdicts"]:
        assert v["verdict"] in VERDICTS
        assert math.isfinite(v["key"]["value"]), v
        assert v["rule"] and v["measured"] and v["baseline"]
    html = (root / "a" / "report.html").read_text(encoding="utf-8")
    assert "<script src=\"http" not in html and "cdn." not in html     # self-contained, offline
    assert res["models"] == {"arch": "llama", "dtype": "float32", "trained": "float32"}
    assert "models: llama body, trained in <b>float32</b>" in html      # the report says what produced it
    for v in res["verdicts"]:
        assert f'id="claim-{v["claim_id"]}"' in html
        for fig in v["figures"]:
            assert (root / "a" / fig).stat().st_size > 1000
    assert "the lecture's claims, measured" in output                     # the verdict table is printed
    assert re.search(r"Report: .*? in \d+\.\d s", output, re.S)         # and the time taken
    runs = res["data"]["training"]["runs"]
    assert {"top2", "top2-alpha0", "switch-top1", "soft-moe", "dense-active", "dense-total"} <= set(runs)


@pytest.mark.slow
def test_quick_profile_same_seed_same_numbers(two_runs):
    (_, a), (_, b), _ = two_runs
    diffs, skipped = differences(a, b, tol=1e-6)
    assert diffs == [], "\n".join(map(str, diffs[:20]))
    assert skipped == []
