"""Data-parallel training on 2 gloo ranks reproduces the single-process run (moescope.lab.train).

One ``mp.spawn`` runs every distributed case (spawning dominates the cost); the tests compare
what the ranks saved with single-process references computed here.
"""

import json
import socket
from dataclasses import replace
from typing import ClassVar

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lab_fixtures import TINY_CORPUS, TINY_LM, TINY_TRAIN, tiny_spec, tiny_tokens
from safetensors.torch import load_file

from moescope.lab import checkpoint as ckpt
from moescope.lab import runs
from moescope.lab import train as train_mod
from moescope.lab.model import TinyLM
from moescope.lab.train import CHECKPOINT_DIR, LOG_FILE, RESULT_FILE, RunResult, train_run
from moescope.moe.losses import CONVENTIONS, global_token_sums, load_balancing_loss, router_z_loss

WORLD = 2
T, E, K, SEQ = 8, 6, 2, 4  # tokens per rank, experts, choices, sequence length (deepseek_seq)
# α = 0.5 (not 0.01): a balance-loss gradient off by the factor W would move the weights well past the tolerance
SPECS = {
    "top2": tiny_spec("topk", "top2", aux={"load_balance": 0.5, "z_loss": 1e-2, "seq_balance": 0.0}),
    "deepseek-v3": tiny_spec("deepseek_v3", "deepseek-v3", aux={"load_balance": 0.0, "z_loss": 0.0,
                                                                "seq_balance": 0.0}),
}
RESUME = replace(SPECS["top2"], name="top2-resumed")
HANDOVER = replace(SPECS["top2"], name="top2-handover")   # interrupted on 2 ranks, finished by one process
INTERRUPT_AT = 7   # after checkpoint 6: the resume also cuts the log back
ODD_BATCH = tiny_spec("topk", "odd-batch", batch_size=3)
TINY_PROFILE = runs.Profile(name="tiny", corpus=TINY_CORPUS, lm=replace(TINY_LM, vocab_size=300),
                            train=replace(TINY_TRAIN, steps=6, checkpoint_every=3), jobs=1)
LAB_RUNS = (runs.BASELINE, runs.AUX_FREE)
# one smoke run per other FFN: DDP needs every parameter to get a gradient in every step
SMOKE = {router: tiny_spec(router, f"smoke-{router}", steps=3, warmup_steps=1, checkpoint_every=3)
         for router in ("switch", "cosine", "soft", "expert_choice", "dense")}


class Interrupt(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s (T, E) float64 logits and their top-K choices."""
    logits = torch.randn(T, E, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + rank))
    return logits, logits.topk(K, dim=-1).indices


def _losses(logits: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {c: load_balancing_loss(torch.sigmoid(logits) if c == "deepseek_seq" else torch.softmax(logits, -1),
                                  indices, convention=c, sequence_length=SEQ) for c in CONVENTIONS}
    return {**out, "z_loss": router_z_loss(logits)}


class _Recorded(TinyLM):
    """TinyLM that remembers its instances, so a rank can save the model train_run built."""

    made: ClassVar[list[TinyLM]] = []

    def __init__(self, cfg):
        super().__init__(cfg)
        _Recorded.made.append(self)


def _worker(rank, world, port, folder):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # 1. the losses of the global batch, and their gradients
        saved = {}
        for name in (*CONVENTIONS, "z_loss"):
            logits, indices = _loss_inputs(rank)
            logits.requires_grad_()
            with global_token_sums():
                loss = _losses(logits, indices)[name]
            loss.backward()
            saved[name] = {"loss": loss.detach(), "grad": logits.grad}
        torch.save(saved, f"{folder}/losses-rank{rank}.pt")

        # 2. training runs, 3. a run interrupted and resumed, 4. a batch the ranks cannot split
        train_mod.TinyLM = _Recorded
        tokens = tiny_tokens()
        models = {}
        for name, spec in {**SPECS, **SMOKE}.items():
            train_run(spec, tokens, f"{folder}/ddp", progress=False)
            models[name] = _Recorded.made[-1].state_dict()

        def stop(step, record):
            if step == INTERRUPT_AT:
                raise Interrupt

        try:
            train_run(RESUME, tokens, f"{folder}/ddp", progress=False, on_step=stop)
        except Interrupt:
            pass
        train_run(RESUME, tokens, f"{folder}/ddp", progress=False)
        models[RESUME.name] = _Recorded.made[-1].state_dict()
        try:
            train_run(HANDOVER, tokens, f"{folder}/ddp", progress=False, on_step=stop)
        except Interrupt:
            pass
        try:
            train_run(ODD_BATCH, tokens, f"{folder}/ddp", progress=False)
            error = ""
        except ValueError as err:
            error = str(err)
        torch.save({"models": models, "odd_batch_error": error}, f"{folder}/train-rank{rank}.pt")

        # 5. what `torchrun -m moescope train` does: the lab's runs, one after another, on all ranks
        train_mod.TinyLM = TinyLM
        got = runs.train_lab_runs(TINY_PROFILE, f"{folder}/lab", only=LAB_RUNS, progress=False)
        torch.save({name: r.val_loss for name, r in got.items()}, f"{folder}/lab-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(folder)), nprocs=WORLD, join=True)
    return folder


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process runs of SPECS (the references)."""
    folder = tmp_path_factory.mktemp("single")
    return {name: train_run(spec, tiny_tokens(), folder, progress=False) for name, spec in SPECS.items()}


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    found = ckpt.latest_checkpoint(run_dir / CHECKPOINT_DIR)
    assert found is not None
    return load_file(str(found[0] / ckpt.MODEL_FILE))


@pytest.mark.parametrize("name", [*CONVENTIONS, "z_loss"])
def test_global_losses_and_their_gradients_match_one_process(name, ranks):
    got = [torch.load(ranks / f"losses-rank{r}.pt")[name] for r in range(WORLD)]
    inputs = [_loss_inputs(r) for r in range(WORLD)]
    logits = torch.cat([x for x, _ in inputs]).requires_grad_()             # (W·T, E): the global batch
    loss = _losses(logits, torch.cat([i for _, i in inputs]))[name]
    loss.backward()
    for r in range(WORLD):
        torch.testing.assert_close(got[r]["loss"], loss.detach(), rtol=1e-6, atol=1e-7)   # float32 losses
        # each rank's gradient is W·∂L/∂(its tokens); DDP's average over the W ranks divides by W
        torch.testing.assert_close(got[r]["grad"] / WORLD, logits.grad[r * T:(r + 1) * T], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(SPECS))
def test_data_parallel_run_matches_single_process(name, ranks, single):
    ref = single[name]
    run_dir = ranks / "ddp" / name
    weights, want = _final_weights(run_dir), _final_weights(ref.run_dir)
    assert weights.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(weights[key], want[key], rtol=1e-5, atol=1e-5, msg=key)
    log, want_log = ckpt.read_log(run_dir / LOG_FILE), ckpt.read_log(ref.log_path)
    assert [r["step"] for r in log] == [r["step"] for r in want_log] == list(range(1, SPECS[name].train.steps + 1))
    for a, b in zip(log, want_log, strict=True):
        for key in ("loss", "total_loss", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
        assert a["aux"] == pytest.approx(b["aux"], rel=1e-5, abs=1e-7)
        assert a["load_cv"] == pytest.approx(b["load_cv"], rel=1e-5, abs=1e-7)
    got = RunResult.from_dict(json.loads((run_dir / RESULT_FILE).read_text()))
    assert got.val_loss == pytest.approx(ref.val_loss, rel=1e-5)
    assert got.train_loss == pytest.approx(ref.train_loss, rel=1e-5)
    assert sorted(got.checkpoints) == sorted(ref.checkpoints)


@pytest.mark.parametrize("router", list(SMOKE))
def test_every_ffn_trains_data_parallel(router, ranks, tmp_path):
    spec = SMOKE[router]
    got = _final_weights(ranks / "ddp" / spec.name)
    want = _final_weights(train_run(spec, tiny_tokens(), tmp_path, progress=False).run_dir)
    if router == "expert_choice":  # experts choose among each rank's tokens: a different (valid) run
        assert all(torch.isfinite(v).all() for v in got.values())
        return
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", [*SPECS, *SMOKE, RESUME.name])
def test_every_rank_holds_the_same_model(name, ranks):
    models = [torch.load(ranks / f"train-rank{r}.pt")["models"][name] for r in range(WORLD)]
    for key in models[0]:
        assert torch.equal(models[0][key], models[1][key]), key


def test_deepseek_bias_follows_the_global_load(ranks, single):
    models = [torch.load(ranks / f"train-rank{r}.pt")["models"]["deepseek-v3"] for r in range(WORLD)]
    want = _final_weights(single["deepseek-v3"].run_dir)
    biases = [k for k in want if k.endswith("selection_bias")]
    assert biases
    for key in biases:
        assert want[key].abs().sum() > 0                     # the bias moved
        for m in models:                                     # the same signs of the same global counts
            assert torch.equal(m[key], want[key]), key


def test_resume_under_data_parallel_equals_the_uninterrupted_run(ranks):
    resumed, whole = ranks / "ddp" / RESUME.name, ranks / "ddp" / "top2"
    a, b = _final_weights(resumed), _final_weights(whole)
    for key in b:
        assert torch.equal(a[key], b[key]), key
    strip = [{k: v for k, v in r.items() if k != "time"} for r in ckpt.read_log(resumed / LOG_FILE)]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in ckpt.read_log(whole / LOG_FILE)]


def test_one_process_finishes_a_data_parallel_run(ranks, single):
    handed = train_run(HANDOVER, tiny_tokens(), ranks / "ddp", progress=False)
    steps = [r["step"] for r in ckpt.read_log(handed.log_path)]
    assert steps == list(range(1, HANDOVER.train.steps + 1))
    got, want = _final_weights(handed.run_dir), _final_weights(single["top2"].run_dir)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)


def test_batch_that_does_not_split_over_the_ranks_is_refused(ranks):
    for r in range(WORLD):
        error = torch.load(ranks / f"train-rank{r}.pt")["odd_batch_error"]
        assert "batch_size=3" in error and "2 data-parallel ranks" in error
    assert not (ranks / "ddp" / ODD_BATCH.name).exists()


def test_lab_finds_the_data_parallel_runs_finished(ranks):
    lab = ranks / "lab" / runs.LAB_TRAINING_DIR
    per_rank = [torch.load(ranks / f"lab-rank{r}.pt") for r in range(WORLD)]
    assert per_rank[0] == per_rank[1] and per_rank[0].keys() == set(LAB_RUNS)   # every rank returns the results
    logs = {name: (lab / "runs" / name / LOG_FILE).read_bytes() for name in LAB_RUNS}
    trained = {name: ckpt.list_checkpoints(lab / "runs" / name / CHECKPOINT_DIR) for name in LAB_RUNS}
    assert json.loads((lab / runs.SUMMARY_FILE).read_text())["wall_time"]["data_parallel_ranks"] == WORLD
    # what `moescope lab` calls (lab/run.py): one process, the same folder — it only re-evaluates
    again = runs.run_profile(TINY_PROFILE, lab, only=LAB_RUNS, progress=False)
    for name in LAB_RUNS:
        assert (lab / "runs" / name / LOG_FILE).read_bytes() == logs[name]          # no step trained again
        assert again[name].checkpoints == trained[name]
        assert again[name].val_loss == pytest.approx(per_rank[0][name], rel=1e-6)   # evaluation in 1 process vs 2


def test_wrapping_a_batch_that_does_not_split_is_refused():
    from moescope.lab.data_parallel import wrap_ddp

    with pytest.raises(ValueError, match=r"batch_size=10 does not split evenly over 4"):
        wrap_ddp(torch.nn.Linear(2, 2), rank=0, world=4, device=torch.device("cpu"), batch_size=10)


def test_without_a_process_group_the_world_is_one_process(monkeypatch):
    from moescope.lab.data_parallel import data_parallel_world, distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed() as world:
        assert world == (0, 1) == data_parallel_world()
        assert not dist.is_initialized()
