"""``moescope train --estimate``: the schedule replay and the per-knob timing (no wall-clock asserted)."""

import itertools

import pytest
from lab_fixtures import tiny_spec
from typer.testing import CliRunner

from moescope.cli import app
from moescope.lab.estimate import RunEstimate, estimate, schedule


def _brute_force_lpt(seconds, jobs):
    """Longest first, each onto the worker that frees up first: simulated event by event."""
    free = [0.0] * jobs
    for s in sorted(seconds, reverse=True):
        i = min(range(jobs), key=lambda j: (free[j], j))
        free[i] += s
    return max(free)


@pytest.mark.parametrize(("seconds", "jobs"), [([5, 3, 3, 2, 2, 1], 2), ([7], 3), ([1, 1, 1, 1], 2), ([], 2),
                                                ([4, 4, 4], 1)])
def test_schedule_is_the_longest_first_replay(seconds, jobs):
    assert schedule(seconds, jobs) == _brute_force_lpt(seconds, jobs)
    assert schedule(seconds, jobs) >= max(seconds, default=0) and schedule(seconds, jobs) >= sum(seconds) / jobs


def test_schedule_is_never_better_than_the_optimum():
    seconds = [3, 3, 2, 2, 2]
    best = min(max(sum(s for s, w in zip(seconds, assign, strict=True) if w == j) for j in range(2))
               for assign in itertools.product(range(2), repeat=len(seconds)))
    assert best <= schedule(seconds, 2) <= 4 / 3 * best   # LPT's guarantee (Graham 1969)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        schedule(seconds, 0)


def test_estimate_times_each_knob_and_counts_its_replicates():
    specs = [tiny_spec("topk"), tiny_spec("dense")]
    seen = []
    rows, wall = estimate(specs, replicates=3, jobs=2, timed_steps=2, warmup_steps=1, on_run=seen.append)
    assert [r.name for r in rows] == ["topk", "dense"] and seen == rows
    assert all(r.step_ms > 0 and r.steps == 12 and r.replicates == 3 for r in rows)
    assert rows[0].seconds == pytest.approx(rows[0].step_ms / 1e3 * 12 * 3)
    assert wall == pytest.approx(schedule([r.step_ms / 1e3 * 12 for r in rows for _ in range(3)], 2))
    assert RunEstimate("x", 1000.0, 10, 2).seconds == 20.0


def test_train_estimate_prints_a_projection_and_trains_nothing(tmp_path):
    result = CliRunner().invoke(app, ["train", "--runs", "dense-masked", "--estimate", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "Projected training" in result.output and "dense-masked" in result.output
    assert not (tmp_path / "o").exists()
