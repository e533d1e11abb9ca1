"""The lab's standard training runs: each differs from the baseline in one knob.

Causal group (next-token LMs, compared with each other):

=========================  ===========================================================
name                       knob
=========================  ===========================================================
``top2``                   baseline: top-2 of 8 experts, load-balance α = 0.01
``top2-alpha0``            no load-balancing loss (α = 0)
``top2-upcycled``          the baseline started as sparse upcycling starts (Komatsuzaki
                           et al. 2022): every expert a copy of one FFN (expert 0's
                           initial weights) + Gaussian noise of 1% of each tensor's std
``switch-top1``            Switch routing: top-1 with capacity factor 1.25
``deepseek-moe``           fine-grained (4E experts of I/4, k = 4k − 2 = 6) + 2 shared
                           experts of I/4: the baseline's active and total parameters
``deepseek-moe-noshared``  the shared-expert ablation: 4E + 2 routed experts of I/4,
                           k = 4k = 8, no shared one — the same 4k expert widths per token
                           (active parameters equal but for 2 router rows; total +0.05%)
``deepseek-v3-auxfree``    DeepSeek-V3 sigmoid router balanced by its selection bias, no
                           auxiliary loss at all
``cosine-top2``            cosine router (angle to the centroids, learnable τ)
``dense-active``           dense FFN with the baseline's active parameters per token
``dense-total``            dense FFN with the baseline's total parameters
=========================  ===========================================================

Masked group (bidirectional, masked-token objective — Soft MoE and Expert Choice are not
causal, so they never share a table with the LMs above):

=========================  ===========================================================
``soft-moe``               Soft MoE, S = 2·seq_len/8 slots per expert (top-2's work per token)
``expert-choice``          experts choose tokens, capacity factor 2 (2 experts per token)
``dense-masked``           dense FFN with the baseline's active parameters per token
=========================  ===========================================================

Replicates. Every run trains ``Profile.replicates`` times: with ``train.seed`` under its own
name, and with ``train.seed + 1``, ``+ 2``, … as ``<name>-seed<train.seed + i>`` (so changing
``train.seed`` moves every run, replicates included, and a claim finds a run's seeds as
``name == prefix or name.startswith(prefix + "-seed")``). Only the seed differs: model
initialisation, batch order and masks.

Architecture. Every profile trains the body of the MoE LLMs the routers come from (``arch="llama"``:
RoPE, RMSNorm, separate q/k/v/o projections; :mod:`moescope.lab.model`), so each top-k run is exactly
a transformers family and is exported beside its checkpoints (``<run>/hf``, :mod:`moescope.lab.export_hf`)
for ``moescope analyze``. ``profile(name, arch="nanogpt")`` gives the body every lab number was measured
on before (learned positions, LayerNorm, fused attention), for comparison.

Profiles (sized for a 2-core VM, one thread per run, two runs at once; ``time moescope train
--profile quick`` measures one, and the README quotes the lab's times):

* ``quick`` — d_model 64, 2 layers, 4 heads, seq_len 64, 8 experts of I = 128, batch 16,
  200 steps, 200k characters per domain, 3 seeds of every run: 39 runs. What makes 3 seeds fit
  the budget of one: 200 steps instead of 250, which costs quality (the curves have *not*
  flattened at 250; each step count has its own cosine schedule); the masked-token runs apply
  the output head only at the masked positions (``TinyLM(..., logits_at_targets=True)``: about
  half their step); AdamW's fused kernel. A step's time is the arithmetic (the tied 2048-token
  head and its softmax, the experts, attention); evaluation and checkpoints are noise.
* ``full`` — d_model 128, 4 layers, seq_len 128, 8 experts of I = 256, batch 16, 400 steps,
  300k characters per domain, 5 seeds of every run: 65 runs, hours of training on 2 cores.
"""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from moescope._files import write_bytes_atomic, write_json_atomic
from moescope.lab._worker import save_tokens
from moescope.lab.corpus import Corpus, CorpusConfig, build_corpus
from moescope.lab.data_parallel import data_parallel_world, distributed
from moescope.lab.model import (
    ARCHS,
    LAB_ARCH,
    LMConfig,
    MoESpec,
    active_params_per_token,
    dense_equivalent,
    total_params,
)
from moescope.lab.tensorboard import require as require_tensorboard
from moescope.lab.tokenizer import CorpusTokens, load_or_train_tokenizer, tokenize_corpus
from moescope.lab.train import RESULT_FILE, RunResult, RunSpec, TrainConfig, train_run

PROFILES = ("quick", "full")
TRAIN_DTYPES = ("float32", "bfloat16")  # how the lab's runs may train (TrainConfig.autocast: None, "bfloat16")
BASELINE, NO_BALANCE, SWITCH, FINE_GRAINED = "top2", "top2-alpha0", "switch-top1", "deepseek-moe"
AUX_FREE, COSINE, DENSE_ACTIVE, DENSE_TOTAL = "deepseek-v3-auxfree", "cosine-top2", "dense-active", "dense-total"
SOFT, EXPERT_CHOICE, DENSE_MASKED = "soft-moe", "expert-choice", "dense-masked"
UPCYCLED, FINE_NO_SHARED = "top2-upcycled", "deepseek-moe-noshared"
SUMMARY_FILE = "training.json"
LAB_TRAINING_DIR = "training"  # moescope lab --out DIR trains (and finds) its runs in DIR/training (lab/run.py)


@dataclass(frozen=True)
class Profile:
    """A named scale: the corpus, the baseline LM, the training recipe, replicates, parallelism."""

    name: str
    corpus: CorpusConfig
    lm: LMConfig                 # the baseline (top-2 of 8); the other runs are derived from it
    train: TrainConfig
    replicates: int = 1          # seeds of every run: train.seed, train.seed + 1, ... (1: tests and smoke runs)
    jobs: int | None = None      # runs trained at once (one process, one thread each); None: min(2, CPUs)
    bias_update_rate: float = 1e-2  # DeepSeek-V3's γ: 10× the report's 1e-3, for 10²–10³ steps, not 10⁵

    def __post_init__(self) -> None:
        if not isinstance(self.replicates, int) or self.replicates < 1:
            raise ValueError(f"replicates must be a positive integer; got {self.replicates!r}")
        if self.jobs is not None and (not isinstance(self.jobs, int) or self.jobs < 1):
            raise ValueError(f"jobs must be a positive integer or None; got {self.jobs!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "corpus": asdict(self.corpus), "lm": self.lm.to_dict(),
                "train": asdict(self.train), "replicates": self.replicates, "jobs": self.jobs,
                "bias_update_rate": self.bias_update_rate}


def profile(name: str = "quick", arch: str = LAB_ARCH) -> Profile:
    """The ``quick`` or ``full`` profile (sized for 2 CPU cores; see the module docstring), its LM built as
    ``arch`` (:data:`~moescope.lab.model.ARCHS`)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got arch={arch!r}")
    if name == "quick":
        return Profile(name="quick", corpus=CorpusConfig(chars_per_domain=200_000),
                       lm=LMConfig(vocab_size=2048, d_model=64, n_layer=2, n_head=4, seq_len=64, arch=arch,
                                   moe=MoESpec(num_experts=8, top_k=2, expert_intermediate=128)),
                       train=TrainConfig(steps=200, batch_size=16, warmup_steps=20, checkpoint_every=50),
                       replicates=3)
    if name == "full":
        return Profile(name="full", corpus=CorpusConfig(chars_per_domain=300_000),
                       lm=LMConfig(vocab_size=2048, d_model=128, n_layer=4, n_head=4, seq_len=128, arch=arch,
                                   moe=MoESpec(num_experts=8, top_k=2, expert_intermediate=256)),
                       train=TrainConfig(steps=400, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=40,
                                         checkpoint_every=100, eval_windows=64),
                       replicates=5)
    raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {name!r}")


def standard_runs(p: Profile) -> list[RunSpec]:
    """Every run of profile ``p``: causal group first, each run followed by its replicates.

    Replicate i (1 <= i < ``p.replicates``) of run ``NAME`` is ``NAME-seed<s>`` with
    ``s = train.seed + i``: only the seed differs (model init, batch order, masks).
    """
    return [replicate for spec in base_runs(p) for replicate in _replicates(spec, p.replicates)]


def _replicates(spec: RunSpec, count: int) -> list[RunSpec]:
    """``spec`` and its ``count - 1`` reseeded copies (named ``<name>-seed<seed>``)."""
    seed = spec.train.seed
    return [spec] + [replace(spec, name=f"{spec.name}-seed{seed + i}", train=replace(spec.train, seed=seed + i))
                     for i in range(1, count)]


def base_runs(p: Profile) -> list[RunSpec]:
    """The seed-``train.seed`` run of every knob (see the module docstring)."""
    lm, tc, moe = p.lm, p.train, p.lm.moe
    no_balance = {**tc.aux, "load_balance": 0.0}
    fine = replace(moe, num_experts=4 * moe.num_experts, expert_intermediate=moe.expert_intermediate // 4,
                   top_k=4 * moe.top_k - 2, shared_experts=2, shared_intermediate=moe.expert_intermediate // 4)
    # the ablation: the 2 always-on experts become 2 more routed ones, each token still uses 4k widths of I/4
    fine_routed = replace(fine, num_experts=fine.num_experts + fine.shared_experts, top_k=4 * moe.top_k,
                          shared_experts=0, shared_intermediate=0)
    runs = [
        RunSpec(BASELINE, lm, tc, knob="baseline: top-2 of 8, α = 0.01"),
        RunSpec(NO_BALANCE, lm, replace(tc, aux=no_balance), knob="α = 0 (no load balancing)"),
        RunSpec(UPCYCLED, replace(lm, moe=replace(moe, init="upcycled")), tc,
                knob=f"upcycled start: every expert a copy of one FFN + {moe.upcycle_noise:.0%} noise"),
        RunSpec(SWITCH, replace(lm, moe=replace(moe, router="switch", top_k=1, capacity_factor=1.25)), tc,
                knob="Switch top-1, capacity factor 1.25"),
        RunSpec(FINE_GRAINED, replace(lm, moe=fine), tc,
                knob=f"fine-grained {fine.num_experts} experts of I={fine.expert_intermediate}, k={fine.top_k}, "
                     f"+{fine.shared_experts} shared"),
        RunSpec(FINE_NO_SHARED, replace(lm, moe=fine_routed), tc,
                knob=f"fine-grained {fine_routed.num_experts} routed experts of I={fine_routed.expert_intermediate}, "
                     f"k={fine_routed.top_k}, no shared expert"),
        RunSpec(AUX_FREE, replace(lm, moe=replace(moe, router="deepseek_v3", bias_update_rate=p.bias_update_rate)),
                replace(tc, aux={k: 0.0 for k in tc.aux}),
                knob=f"DeepSeek-V3 bias balancing (γ = {p.bias_update_rate}), no auxiliary loss"),
        RunSpec(COSINE, replace(lm, moe=replace(moe, router="cosine")), tc, knob="cosine router"),
        RunSpec(DENSE_ACTIVE, dense_equivalent(lm, "active"), tc, knob="dense, equal active parameters"),
        RunSpec(DENSE_TOTAL, dense_equivalent(lm, "total"), tc, knob="dense, equal total parameters"),
    ]
    bi = replace(lm, bidirectional=True)
    runs += [
        RunSpec(SOFT, replace(bi, moe=replace(moe, router="soft")), tc, objective="masked",
                knob="Soft MoE (masked-token objective)"),
        RunSpec(EXPERT_CHOICE, replace(bi, moe=replace(moe, router="expert_choice", capacity_factor=2.0)), tc,
                objective="masked", knob="Expert Choice, capacity factor 2 (masked-token objective)"),
        RunSpec(DENSE_MASKED, dense_equivalent(bi, "active"), tc, objective="masked",
                knob="dense, equal active parameters (masked-token objective)"),
    ]
    return runs


def prepare(p: Profile, out_dir: str | Path) -> tuple[Corpus, CorpusTokens]:
    """Build the corpus, load or train the tokenizer (cached in ``out_dir``), tokenise."""
    corpus = build_corpus(p.corpus)
    tok = load_or_train_tokenizer(corpus, out_dir, p.lm.vocab_size)
    return corpus, tokenize_corpus(corpus, tok)


def run_profile(p: Profile | str, out_dir: str | Path, *, progress: bool = True, jobs: int | None = None,
                only: tuple[str, ...] | None = None, tensorboard: bool = False) -> dict[str, RunResult]:
    """Train every run of ``p`` (resuming any that were interrupted) under ``out_dir/runs/``.

    ``jobs`` (default ``p.jobs``) runs train at once, on worker processes
    (``python -m moescope.lab._worker``) of one thread each, so results do not depend on
    ``jobs``; with ``jobs=1`` every run trains in this process. ``only`` restricts to named runs.
    ``tensorboard`` also writes each run's curves as TensorBoard events (``<run>/tensorboard``).
    Each run a transformers family computes is also saved as a Hugging Face checkpoint beside its own
    checkpoints (``runs/<run>/hf``, :func:`~moescope.lab.export_hf.export_beside`). Writes
    ``out_dir/training.json`` (profile, corpus and tokenizer provenance, results, where each run was exported
    or why not) and returns the results by run name, in :func:`standard_runs` order.

    Data parallel (torch.distributed initialised with W > 1 ranks, every rank calling this):
    ``jobs`` is ignored, each run trains on all ranks in turn, rank 0 writes the files and
    every rank returns the results.
    """
    p = profile(p) if isinstance(p, str) else p
    out_dir = Path(out_dir)
    if tensorboard:
        require_tensorboard()
    t0 = time.perf_counter()
    specs = select_runs(p, only)
    rank, world = data_parallel_world()
    if world > 1:  # rank 0 trains and caches the tokenizer, then the others read it
        import torch.distributed as dist

        if rank == 0:
            corpus, tokens = prepare(p, out_dir)
        dist.barrier()
        if rank != 0:
            corpus, tokens = prepare(p, out_dir)
    else:
        corpus, tokens = prepare(p, out_dir)
    prep_time = time.perf_counter() - t0
    jobs = jobs if jobs is not None else p.jobs if p.jobs is not None else min(2, os.cpu_count() or 1)
    results: dict[str, RunResult] = {}
    runs_dir = out_dir / "runs"
    if world > 1 or jobs <= 1:  # data parallel: every rank trains every run, one run after another
        for spec in specs:
            results[spec.name] = train_run(spec, tokens, runs_dir, progress=progress and rank == 0,
                                           tensorboard=tensorboard)
    else:
        results = _run_parallel(specs, tokens, runs_dir, jobs, progress, tensorboard)
    results = {s.name: results[s.name] for s in specs}
    exports: dict[str, str] = {}
    if rank == 0:
        from moescope.lab.export_hf import export_beside

        exports = {name: str(where) for name, where in export_beside(results, out_dir).items()}
    total = time.perf_counter() - t0
    if rank == 0:
        wall = {"prepare": prep_time, "total": total, "jobs": jobs,
                "runs_cpu": sum(r.cpu_time for r in results.values())}
        if world > 1:
            wall.update(jobs=1, data_parallel_ranks=world)  # runs_cpu: rank 0's share
        write_json_atomic(out_dir / SUMMARY_FILE, json.loads(json.dumps({
            "profile": p.to_dict(), "corpus": corpus.provenance(), "tokens": tokens.provenance(),
            "runs": {name: r.to_dict() for name, r in results.items()},
            "specs": {s.name: s.to_dict() for s in specs},
            "hf_exports": exports,
            "wall_time": wall}, default=str)))
    return results


def select_runs(p: Profile, only: tuple[str, ...] | None = None) -> list[RunSpec]:
    """The runs of ``p`` named in ``only`` (all when None), in :func:`standard_runs` order."""
    specs = standard_runs(p)
    if only is None:
        return specs
    unknown = set(only) - {s.name for s in specs}
    if unknown:
        raise ValueError(f"unknown run names {sorted(unknown)}; known: {', '.join(s.name for s in specs)}")
    return [s for s in specs if s.name in only]


def lab_profile(name: str = "quick", seed: int = 0, arch: str = LAB_ARCH, dtype: str = "float32") -> Profile:
    """The profile ``moescope lab --profile NAME --seed SEED --arch ARCH --dtype DTYPE`` trains (lab/run.py's
    ``_training``); ``dtype`` one of :data:`TRAIN_DTYPES` (bfloat16: every step's forward under autocast)."""
    if dtype not in TRAIN_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(TRAIN_DTYPES)} for the lab's runs; got dtype={dtype!r}")
    p = profile(name, arch)
    return replace(p, train=replace(p.train, seed=seed, autocast=None if dtype == "float32" else dtype))


def train_lab_runs(p: Profile, lab_dir: str | Path, *, only: tuple[str, ...] | None = None,
                   progress: bool = True, tensorboard: bool = False) -> dict[str, RunResult]:
    """Train the runs of ``p`` where ``moescope lab --out LAB_DIR`` looks for them (``LAB_DIR/training``).

    Under ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1) the process group is created here
    (:func:`~moescope.lab.data_parallel.distributed`) and each run trains data-parallel on the N ranks;
    otherwise as :func:`run_profile` (worker processes). Every rank returns the results.
    """
    with distributed():
        return run_profile(p, Path(lab_dir) / LAB_TRAINING_DIR, progress=progress, only=only,
                           tensorboard=tensorboard)


def _cost(spec: RunSpec) -> float:
    """A proxy of a run's CPU time: steps × (active + a quarter of the idle expert parameters),
    less the output head at the positions a masked-token run does not predict."""
    active, total = active_params_per_token(spec.lm), total_params(spec.lm)
    masked = spec.objective == "masked"
    skipped_head = (1 - spec.train.mask_rate) * spec.lm.vocab_size * spec.lm.d_model if masked else 0
    return spec.train.steps * (active + 0.25 * (total - active) - skipped_head)


def _run_parallel(specs: list[RunSpec], tokens: CorpusTokens, runs_dir: Path, jobs: int,
                  progress: bool, tensorboard: bool = False) -> dict[str, RunResult]:
    """Train ``specs`` on ``jobs`` long-lived workers (``moescope.lab._worker``), longest first.

    Each idle worker gets the next run; its stderr goes to ``runs_dir/worker-<i>.log``. A
    worker that dies stops the others and raises with the tail of its log (finished runs keep
    their results, interrupted ones their checkpoints: calling again resumes them).
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(save_tokens(tokens), buf)
    tokens_path = write_bytes_atomic(runs_dir / ".tokens.pt", buf.getvalue())
    pending = sorted(specs, key=_cost, reverse=True)   # longest first: the last to finish is short
    spec_paths = {s.name: write_json_atomic(runs_dir / s.name / "spec.json", s.to_dict()) for s in specs}
    workers, logs, busy = [], [], {}
    results: dict[str, RunResult] = {}
    try:
        for i in range(min(jobs, len(specs))):
            logs.append(open(runs_dir / f"worker-{i}.log", "wb"))  # closed in the finally below
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "moescope.lab._worker", str(tokens_path), str(runs_dir),
                 *(["--tensorboard"] if tensorboard else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[-1], text=True, bufsize=1))
        with _runs_bar(progress, len(specs)) as advance:
            while pending or busy:
                for w in workers:
                    if w not in busy and pending and w.stdin:
                        spec = pending.pop(0)
                        busy[w] = spec.name
                        w.stdin.write(f"{spec_paths[spec.name]}\n")
                        w.stdin.flush()
                    elif w not in busy and not pending and w.stdin and not w.stdin.closed:
                        w.stdin.close()                     # nothing left: the worker exits
                ready, _, _ = select.select([w.stdout for w in busy], [], [], 1.0)
                for w in [w for w in busy if w.stdout in ready]:
                    name, line = busy.pop(w), w.stdout.readline()
                    if line.strip() != f"done {name}":
                        w.wait()
                        log = runs_dir / f"worker-{workers.index(w)}.log"
                        raise RuntimeError(f"run {name!r} failed (worker exit code {w.returncode}); "
                                           f"{log} ends:\n{log.read_text(errors='replace')[-3000:]}")
                    results[name] = RunResult.from_dict(json.loads((runs_dir / name / RESULT_FILE).read_text()))
                    advance(f"{name}: val {results[name].val_loss:.3f}")
        for w in workers:
            if w.stdin and not w.stdin.closed:
                w.stdin.close()
            w.wait()
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
            for pipe in (w.stdin, w.stdout):
                if pipe and not pipe.closed:
                    pipe.close()
        for f in logs:
            f.close()
        tokens_path.unlink(missing_ok=True)
    return results


@contextmanager
def _runs_bar(enabled: bool, total: int) -> Iterator[Callable[[str], None]]:
    """One rich progress bar over all runs (or a no-op); yields ``advance(last_message)``."""
    if not enabled:
        yield lambda last: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("runs", total=total, last="")
        yield lambda last: bar.update(task, advance=1, last=last)
