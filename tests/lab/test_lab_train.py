import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lab_fixtures import TINY_TRAIN, tiny_spec, tiny_tokens
from safetensors.torch import load_file

from moescope.lab import checkpoint as ckpt
from moescope.lab.model import TinyLM
from moescope.lab.train import (
    CHECKPOINT_DIR,
    LOG_FILE,
    RESULT_FILE,
    BatchSampler,
    TrainConfig,
    deterministic,
    load_model,
    make_optimizer,
    train_run,
    train_step,
)

HERE = Path(__file__).parent


class Interrupt(Exception):
    pass


def _stop_at(k):
    def on_step(step, record):
        if step == k:
            raise Interrupt(step)
    return on_step


def _final_weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.checkpoints[max(result.checkpoints)] / ckpt.MODEL_FILE))


def _log_without_time(result) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in ckpt.read_log(result.log_path)]


def _assert_same_run(a, b):
    wa, wb = _final_weights(a), _final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert _log_without_time(a) == _log_without_time(b)
    assert a.val_loss_by_domain == b.val_loss_by_domain and a.train_loss == b.train_loss
    assert sorted(a.checkpoints) == sorted(b.checkpoints)


def _no_partial_files(run_dir: Path):
    leftovers = [p for p in (run_dir / CHECKPOINT_DIR).rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    for path in ckpt.list_checkpoints(run_dir / CHECKPOINT_DIR).values():
        assert ckpt.verify_checkpoint(path) is not None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted tiny top-2 run."""
    return train_run(tiny_spec("topk"), tiny_tokens(), tmp_path_factory.mktemp("ref"), progress=False)


# -- what a run writes ---------------------------------------------------------------------------
def test_run_writes_checkpoints_log_and_result(reference):
    run_dir = reference.run_dir
    assert sorted(reference.checkpoints) == [0, 3, 6, 9, 12]          # kept fractions of 12 steps
    for step, path in reference.checkpoints.items():
        state = ckpt.verify_checkpoint(path)
        assert state["step"] == step and set(state["rng"]) == {"torch", "python", "sampler"}
        assert {p.name for p in path.iterdir()} == {ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.STATE_FILE}
    records = ckpt.read_log(run_dir / LOG_FILE)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"loss", "total_loss", "lr", "grad_norm", "aux", "load_cv", "time"} <= set(records[0])
    assert len(records[0]["load_cv"]) == 2 and set(records[0]["aux"]) == {"load_balance", "z_loss"}
    assert (run_dir / RESULT_FILE).exists()
    assert set(reference.val_loss_by_domain) == {"code", "language", "math"}
    assert reference.params_active < reference.params_total
    assert records[-1]["loss"] < records[0]["loss"]                     # it learns something
    _no_partial_files(run_dir)


def test_load_model_from_a_checkpoint(reference, tmp_path):
    model = load_model(reference.checkpoints[12])
    assert model.cfg == tiny_spec("topk").lm and not model.training
    weights = _final_weights(reference)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    initial = load_model(reference.checkpoints[0]).state_dict()
    assert not torch.equal(initial["wte.weight"], weights["wte.weight"])
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        load_model(tmp_path)


def test_unknown_aux_loss_name_is_refused():
    with pytest.raises(ValueError, match="load_balanc"):
        TrainConfig(aux={"load_balanc": 0.01})


def test_lr_schedule_by_hand():
    cfg = TrainConfig(steps=12, warmup_steps=2, lr=1.0, min_lr=0.1)
    assert [cfg.lr_at(s) for s in (0, 1, 2)] == [1 / 3, 2 / 3, 1.0]       # (s+1)/(warmup+1), then the peak
    assert cfg.lr_at(7) == pytest.approx(0.1 + 0.45 * (1 + 0))            # half way: cos(π/2) = 0
    assert cfg.lr_at(12) == pytest.approx(0.1)
    lrs = [cfg.lr_at(s) for s in range(2, 12)]
    assert lrs == sorted(lrs, reverse=True)


# -- resume --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", [7, 8], ids=["between-checkpoints", "right-after-a-checkpoint"])
def test_resume_after_an_exception_is_bit_identical(reference, tmp_path, stop):
    spec, tokens = tiny_spec("topk"), tiny_tokens()
    with pytest.raises(Interrupt):
        train_run(spec, tokens, tmp_path, progress=False, on_step=_stop_at(stop))
    assert [r["step"] for r in ckpt.read_log(tmp_path / spec.name / LOG_FILE)][-1] == stop
    seen = []
    resumed = train_run(spec, tokens, tmp_path, progress=False, on_step=lambda s, r: seen.append(s))
    assert seen[0] == {7: 7, 8: 9}[stop]                                 # resumed from step 6 / 8, not 0
    _assert_same_run(reference, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["slow", "kill-in-write"])
def test_resume_after_sigkill_is_bit_identical(reference, tmp_path, mode):
    spec = tiny_spec("topk")
    run_dir = tmp_path / spec.name
    child = subprocess.Popen([sys.executable, str(HERE / "lab_train_child.py"), str(tmp_path), mode],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with child:
        if mode == "slow":       # kill it from outside once it is half way
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and child.poll() is None:
                if any(r["step"] >= 5 for r in ckpt.read_log(run_dir / LOG_FILE)):
                    os.kill(child.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
        _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    if mode == "kill-in-write":  # the crash left a temporary checkpoint behind, never a step_* directory
        assert any(p.name.startswith(".step_000008.") for p in (run_dir / CHECKPOINT_DIR).iterdir())
        assert not (run_dir / CHECKPOINT_DIR / "step_000008").exists()
    seen = []
    resumed = train_run(spec, tiny_tokens(), tmp_path, progress=False, on_step=lambda s, r: seen.append(s))
    assert seen[0] > 1 and (mode == "slow" or seen[0] == 7)            # resumed from a checkpoint, not step 0
    _no_partial_files(run_dir)
    _assert_same_run(reference, resumed)


def test_crash_between_temp_write_and_rename_leaves_no_partial_files(reference, tmp_path, monkeypatch):
    spec, tokens = tiny_spec("topk"), tiny_tokens()
    real = os.replace

    def failing(src, dst):
        if Path(dst).name == "step_000006":          # the checkpoint directory's commit
            raise OSError("disk full (simulated)")
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", failing)
    with pytest.raises(OSError, match="simulated"):
        train_run(spec, tokens, tmp_path, progress=False)
    run_dir = tmp_path / spec.name
    _no_partial_files(run_dir)
    assert sorted(ckpt.list_checkpoints(run_dir / CHECKPOINT_DIR)) == [0, 3, 4]

    def failing_file(src, dst):                      # now inside write_bytes_atomic, for a file
        if Path(dst).name == ckpt.OPTIMIZER_FILE and ".step_000006." in str(dst):
            raise OSError("simulated")
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", failing_file)
    with pytest.raises(OSError, match="simulated"):
        train_run(spec, tokens, tmp_path, progress=False)
    _no_partial_files(run_dir)
    monkeypatch.setattr(ckpt.os, "replace", real)
    _assert_same_run(reference, train_run(spec, tokens, tmp_path, progress=False))


def test_finished_run_is_only_re_evaluated(reference):
    again = train_run(tiny_spec("topk"), tiny_tokens(), reference.run_dir.parent, progress=False,
                      on_step=lambda s, r: pytest.fail("a finished run trained again"))
    _assert_same_run(reference, again)


def test_other_config_in_the_same_directory_is_refused(reference):
    spec = tiny_spec("topk", lr=1e-3)
    with pytest.raises(ValueError, match="different run configuration"):
        train_run(spec, tiny_tokens(), reference.run_dir.parent, progress=False)


def test_deterministic_restores_global_settings():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with deterministic(1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det


# -- routers in training ---------------------------------------------------------------------------
def test_deepseek_bias_moves_in_steps_of_gamma(tmp_path):
    gamma = 0.05
    spec = tiny_spec("deepseek_v3", aux={})
    spec = replace(spec, lm=replace(spec.lm, moe=replace(spec.lm.moe, bias_update_rate=gamma)))
    weights = _final_weights(train_run(spec, tiny_tokens(), tmp_path, progress=False))
    for layer in range(spec.lm.n_layer):
        bias = weights[f"blocks.{layer}.ffn.router.selection_bias"]
        assert bias.abs().max() > 0
        steps = bias / gamma                          # Σ sign(...) over 12 updates: an integer in [-12, 12]
        assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 12
        assert torch.allclose(bias.sum(), torch.tensor(0.0), atol=12 * gamma)
    frozen = replace(spec, name="frozen", lm=replace(spec.lm, moe=replace(spec.lm.moe, bias_update_rate=0.0)))
    weights = _final_weights(train_run(frozen, tiny_tokens(), tmp_path, progress=False))
    assert all(float(weights[f"blocks.{i}.ffn.router.selection_bias"].abs().max()) == 0 for i in range(2))


def test_balance_loss_reaches_the_router_gradient():
    """Hook the router weight's gradient in one training step with α = 0 and α = 0.5."""
    spec = tiny_spec("topk")
    tokens = tiny_tokens()
    grads = {}
    for alpha in (0.0, 0.5):
        cfg = replace(TINY_TRAIN, aux={"load_balance": alpha})
        torch.manual_seed(0)
        model = TinyLM(spec.lm)
        model.blocks[0].ffn.router.weight.register_hook(lambda g, a=alpha: grads.__setitem__(a, g.clone()))
        sampler = BatchSampler(tokens.train, seq_len=16, batch_size=4, objective="causal", mask_id=1,
                               mask_rate=0.15, seed=0)
        record = train_step(model, make_optimizer(model, cfg), sampler, cfg, 0)
    # the balance loss's own gradient, on the same initial model and batch
    torch.manual_seed(0)
    model = TinyLM(spec.lm)
    sampler = BatchSampler(tokens.train, seq_len=16, batch_size=4, objective="causal", mask_id=1,
                           mask_rate=0.15, seed=0)
    x, y = sampler.next()
    lb = model(x, targets=y).aux_losses["load_balance"]
    (g_lb,) = torch.autograd.grad(lb, model.blocks[0].ffn.router.weight)
    assert g_lb.abs().max() > 0
    torch.testing.assert_close(grads[0.5] - grads[0.0], 0.5 * g_lb, rtol=1e-4, atol=1e-6)
    assert record["total_loss"] == pytest.approx(record["loss"] + 0.5 * record["aux"]["load_balance"], rel=1e-6)


@pytest.mark.slow
def test_balance_loss_lowers_the_load_cv(tmp_path):
    tokens = tiny_tokens()
    cv = {}
    for alpha in (0.0, 0.1):
        spec = tiny_spec("topk", name=f"alpha{alpha}", steps=60, checkpoint_every=60, aux={"load_balance": alpha})
        train_run(spec, tokens, tmp_path, progress=False)
        last = ckpt.read_log(tmp_path / spec.name / LOG_FILE)[-20:]
        cv[alpha] = sum(sum(r["load_cv"]) / len(r["load_cv"]) for r in last) / len(last)
    assert cv[0.1] < 0.5 * cv[0.0]          # measured: 0.23 vs 0.83


# -- upcycled start and the masked objective -------------------------------------------------------
def test_upcycled_run_checkpoints_its_copied_experts_at_step_zero(tmp_path):
    spec = tiny_spec("topk", name="up")
    spec = replace(spec, lm=replace(spec.lm, moe=replace(spec.lm.moe, init="upcycled")))
    result = train_run(spec, tiny_tokens(), tmp_path, progress=False)
    assert sorted(result.checkpoints) == [0, 3, 6, 9, 12]
    start, end = (load_model(result.checkpoints[s]).moe_layers()[0].experts.gate_up_proj for s in (0, 12))
    spread = (start - start[0:1]).std() / start[0].std()                  # ~ sqrt(2) · 1% noise at step 0
    assert spread < 0.02
    assert (end - end[0:1]).std() / end[0].std() > spread                 # training moves the copies apart


@pytest.mark.parametrize("router", ["soft", "expert_choice"])
def test_masked_run_resumes_bit_identically(tmp_path, router):
    # the masked objective trains with the head at the masked positions only (logits_at_targets)
    spec, tokens = tiny_spec(router), tiny_tokens()
    reference = train_run(spec, tokens, tmp_path / "ref", progress=False)
    with pytest.raises(Interrupt):
        train_run(spec, tokens, tmp_path / "cut", progress=False, on_step=_stop_at(7))
    _assert_same_run(reference, train_run(spec, tokens, tmp_path / "cut", progress=False))
