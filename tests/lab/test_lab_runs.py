import json
from dataclasses import replace

import pytest
from lab_fixtures import TINY_CORPUS, TINY_LM, TINY_TRAIN

from moescope.lab import runs
from moescope.lab.model import active_params_per_token, total_params
from moescope.lab.train import RunResult, RunSpec

CAUSAL = [runs.BASELINE, runs.NO_BALANCE, runs.SWITCH, runs.FINE_GRAINED, runs.AUX_FREE, runs.COSINE,
          runs.DENSE_ACTIVE, runs.DENSE_TOTAL]
MASKED = [runs.SOFT, runs.EXPERT_CHOICE, runs.DENSE_MASKED]


def _by_name(p):
    return {s.name: s for s in runs.standard_runs(p)}


def test_quick_profile_run_list():
    specs = runs.standard_runs(runs.profile("quick"))
    assert [s.name for s in specs] == CAUSAL + MASKED
    assert all(s.comparable_group == "causal" and s.lm.causal for s in specs if s.name in CAUSAL)
    assert all(s.comparable_group == "masked" and s.lm.bidirectional for s in specs if s.name in MASKED)


def test_full_profile_has_three_seeds_of_baseline_and_alpha0():
    specs = _by_name(runs.profile("full"))
    for name in (runs.BASELINE, runs.NO_BALANCE):
        seeds = sorted(s.train.seed for n, s in specs.items() if n.split("-seed")[0] == name)
        assert seeds == [0, 1, 2]
    assert sum(n.startswith(runs.SWITCH) for n in specs) == 1
    assert len(specs) == len(CAUSAL) + len(MASKED) + 4
    p = runs.profile("full")
    shifted = _by_name(replace(p, train=replace(p.train, seed=7)))     # one seed moves every run
    assert sorted(s.train.seed for s in shifted.values()) == [7] * 11 + [8, 8, 9, 9]
    assert "top2-seed9" in shifted


@pytest.mark.parametrize("name", runs.PROFILES)
def test_each_run_differs_from_the_baseline_in_one_knob(name):
    p = runs.profile(name)
    s = _by_name(p)
    base = s[runs.BASELINE]
    assert base.lm == p.lm and base.train == p.train and base.lm.moe.top_k == 2 and base.lm.moe.num_experts == 8
    # α = 0: only the balance coefficient changes
    assert s[runs.NO_BALANCE].lm == base.lm
    assert s[runs.NO_BALANCE].train == replace(base.train, aux={**base.train.aux, "load_balance": 0.0})
    assert base.train.aux["load_balance"] > 0
    # routers: only the MoE spec changes
    for n in (runs.SWITCH, runs.FINE_GRAINED, runs.AUX_FREE, runs.COSINE):
        assert replace(s[n].lm, moe=base.lm.moe) == base.lm
    assert s[runs.SWITCH].lm.moe.router == "switch" and s[runs.SWITCH].lm.moe.top_k == 1
    assert s[runs.COSINE].lm.moe.router == "cosine"
    v3 = s[runs.AUX_FREE]
    assert v3.lm.moe.router == "deepseek_v3" and v3.lm.moe.bias_update_rate > 0
    assert all(c == 0 for c in v3.train.aux.values())
    # fine-grained + shared: same active expert width and about the same total
    fine, moe = s[runs.FINE_GRAINED].lm.moe, base.lm.moe
    active = fine.top_k * fine.expert_intermediate + fine.shared_experts * fine.shared_intermediate
    assert active == moe.top_k * moe.expert_intermediate
    assert fine.num_experts * fine.expert_intermediate == moe.num_experts * moe.expert_intermediate
    assert abs(active_params_per_token(s[runs.FINE_GRAINED].lm) / active_params_per_token(base.lm) - 1) < 0.03
    # dense baselines: equal active / equal total parameters within the documented rounding
    tol = 1.5 * base.lm.d_model * base.lm.n_layer + 1
    assert abs(total_params(s[runs.DENSE_ACTIVE].lm) - active_params_per_token(base.lm)) <= tol
    assert abs(total_params(s[runs.DENSE_TOTAL].lm) - total_params(base.lm)) <= tol
    # masked group: Soft MoE and Expert Choice do top-2's expert work per token
    for n in (runs.SOFT, runs.EXPERT_CHOICE):
        assert s[n].objective == "masked" and s[n].lm.moe.num_experts == 8
    assert s[runs.SOFT].lm.slots_per_expert * 8 == 2 * base.lm.seq_len
    assert s[runs.EXPERT_CHOICE].lm.moe.capacity == 2.0
    assert total_params(s[runs.DENSE_MASKED].lm) == total_params(s[runs.DENSE_ACTIVE].lm)


@pytest.mark.parametrize("name", runs.PROFILES)
def test_specs_survive_json(name):
    for spec in runs.standard_runs(runs.profile(name)):
        assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_bad_profile_and_run_names(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        runs.profile("huge")
    with pytest.raises(ValueError, match="unknown run names"):
        runs.run_profile(_tiny_profile(), tmp_path, only=("nope",), progress=False)


def _tiny_profile():
    return runs.Profile(name="tiny", corpus=TINY_CORPUS, lm=replace(TINY_LM, vocab_size=300),
                        train=replace(TINY_TRAIN, steps=6, checkpoint_every=3), jobs=1)


@pytest.mark.slow
def test_run_profile_results_do_not_depend_on_jobs(tmp_path):
    only = (runs.BASELINE, runs.SOFT)
    serial = runs.run_profile(_tiny_profile(), tmp_path / "serial", only=only, progress=False)
    parallel = runs.run_profile(_tiny_profile(), tmp_path / "parallel", only=only, progress=False, jobs=2)
    assert list(serial) == list(only) == list(parallel)
    for name in only:
        assert serial[name].val_loss_by_domain == parallel[name].val_loss_by_domain
        assert serial[name].objective == parallel[name].objective
        assert RunResult.from_dict(serial[name].to_dict()) == serial[name]
    summary = json.loads((tmp_path / "serial" / runs.SUMMARY_FILE).read_text())
    assert set(summary) == {"profile", "corpus", "tokens", "runs", "specs", "wall_time"}
    assert summary["runs"][runs.SOFT]["comparable_group"] == "masked"
    assert (tmp_path / "serial" / "tokenizer.json").exists()
