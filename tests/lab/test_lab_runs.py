import json
from dataclasses import replace

import pytest
from lab_fixtures import TINY_CORPUS, TINY_LM, TINY_TRAIN

from moescope.lab import runs
from moescope.lab.model import LAB_ARCH, active_params_per_token, total_params
from moescope.lab.train import RunResult, RunSpec

CAUSAL = [runs.BASELINE, runs.NO_BALANCE, runs.UPCYCLED, runs.SWITCH, runs.FINE_GRAINED, runs.FINE_NO_SHARED,
          runs.AUX_FREE, runs.COSINE, runs.DENSE_ACTIVE, runs.DENSE_TOTAL]
MASKED = [runs.SOFT, runs.EXPERT_CHOICE, runs.DENSE_MASKED]


def _by_name(p):
    return {s.name: s for s in runs.standard_runs(p)}


def _with_seeds(names, seeds):
    return [n if i == 0 else f"{n}-seed{s}" for n in names for i, s in enumerate(seeds)]


def test_quick_profile_run_list():
    p = runs.profile("quick")
    assert p.replicates == 3
    specs = runs.standard_runs(p)
    assert [s.name for s in specs] == _with_seeds(CAUSAL + MASKED, [0, 1, 2])
    causal = set(_with_seeds(CAUSAL, [0, 1, 2]))
    assert all(s.comparable_group == "causal" and s.lm.causal for s in specs if s.name in causal)
    assert all(s.comparable_group == "masked" and s.lm.bidirectional for s in specs if s.name not in causal)


@pytest.mark.parametrize(("name", "count"), [("quick", 3), ("full", 5)])
def test_every_run_has_its_replicates(name, count):
    p = runs.profile(name)
    specs = _by_name(p)
    assert len(specs) == count * len(CAUSAL + MASKED)
    for base in CAUSAL + MASKED:
        # the claims' rule for finding a run's seeds (lab/claims/_trained.py)
        mine = [s for n, s in specs.items() if n == base or n.startswith(base + "-seed")]
        assert sorted(s.train.seed for s in mine) == list(range(count))
        for s in mine:  # a replicate differs from its run in the seed alone
            assert replace(s, name=base, train=replace(s.train, seed=0)) == specs[base]
    shifted = _by_name(replace(p, train=replace(p.train, seed=7)))     # one seed moves every run
    assert sorted({s.train.seed for s in shifted.values()}) == list(range(7, 7 + count))
    assert f"top2-seed{7 + count - 1}" in shifted and "top2-seed1" not in shifted


def test_replicates_must_be_positive():
    with pytest.raises(ValueError, match="replicates"):
        replace(runs.profile("quick"), replicates=0)


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
    # upcycled: only the experts' initialisation changes
    assert s[runs.UPCYCLED].lm == replace(base.lm, moe=replace(base.lm.moe, init="upcycled"))
    assert s[runs.UPCYCLED].train == base.train
    # fine-grained without shared experts: the 2 shared become routed, k = 4·2; same active, ~same total
    routed, fine_lm = s[runs.FINE_NO_SHARED].lm, s[runs.FINE_GRAINED].lm
    assert routed.moe.shared_experts == 0 and routed.moe.num_experts == fine_lm.moe.num_experts + 2
    assert routed.moe.top_k == 4 * base.lm.moe.top_k
    assert routed.moe.expert_intermediate == fine_lm.moe.expert_intermediate
    assert active_params_per_token(routed) - active_params_per_token(fine_lm) == 2 * base.lm.d_model * base.lm.n_layer
    assert abs(active_params_per_token(routed) / active_params_per_token(fine_lm) - 1) < 0.01   # only 2 router rows
    assert abs(total_params(routed) / total_params(fine_lm) - 1) < 0.03
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
    return runs.Profile(name="tiny", corpus=TINY_CORPUS, lm=replace(TINY_LM, vocab_size=300, arch=LAB_ARCH),
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
    assert set(summary) == {"profile", "corpus", "tokens", "runs", "specs", "hf_exports", "wall_time"}
    assert summary["runs"][runs.SOFT]["comparable_group"] == "masked"
    # the baseline is a Mixtral checkpoint beside its own checkpoints; Soft MoE has no transformers family
    assert summary["hf_exports"][runs.BASELINE] == str(serial[runs.BASELINE].run_dir / "hf")
    assert json.loads((serial[runs.BASELINE].run_dir / "hf" / "config.json").read_text())["model_type"] == "mixtral"
    assert summary["hf_exports"][runs.SOFT].startswith("not exportable: ")
    made = (serial[runs.BASELINE].run_dir / "hf" / "model.safetensors").stat().st_mtime_ns
    runs.run_profile(_tiny_profile(), tmp_path / "serial", only=only, progress=False)   # finished: kept as it is
    assert (serial[runs.BASELINE].run_dir / "hf" / "model.safetensors").stat().st_mtime_ns == made
    assert (tmp_path / "serial" / "tokenizer.json").exists()
