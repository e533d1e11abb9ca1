"""The lab's standard training runs: each differs from the baseline in one knob.

Causal group (next-token LMs, compared with each other):

==========================  ==========================================================  =====
name                        knob                                                        seeds
==========================  ==========================================================  =====
``top2``                    baseline: top-2 of 8 experts, load-balance α = 0.01         all
``top2-alpha0``             no load-balancing loss (α = 0)                              all
``switch-top1``             Switch routing: top-1 with capacity factor 1.25             1
``deepseek-moe``            fine-grained (4× more, 4× narrower experts, k = 6) +        1
                            2 shared experts: the same active and ~total parameters
``deepseek-v3-auxfree``     DeepSeek-V3 sigmoid router balanced by its selection bias,  1
                            no auxiliary loss at all
``cosine-top2``             cosine router (angle to the centroids, learnable τ)         1
``dense-active``            dense FFN with the baseline's active parameters per token   1
``dense-total``             dense FFN with the baseline's total parameters              1
==========================  ==========================================================  =====

Masked group (bidirectional, masked-token objective — Soft MoE and Expert Choice are not
causal, so they never share a table with the LMs above):

==========================  ==========================================================
``soft-moe``                Soft MoE, S = 2·seq_len/8 slots per expert (top-2's work per token)
``expert-choice``           experts choose tokens, capacity factor 2 (2 experts per token)
``dense-masked``            dense FFN with the baseline's active parameters per token
==========================  ==========================================================

Extra seeds are named ``<name>-seed<k>``. Profiles: ``quick`` (every run in about 3 minutes on
2 CPU cores: two runs train at once, one thread each) and ``full`` (about 35 minutes: a wider,
deeper model, longer training, 3 seeds of the baseline and of α = 0).
"""

from __future__ import annotations

import io
import json
import os
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
from moescope.lab.model import LMConfig, MoESpec, dense_equivalent, total_params
from moescope.lab.tokenizer import CorpusTokens, load_or_train_tokenizer, tokenize_corpus
from moescope.lab.train import RESULT_FILE, RunResult, RunSpec, TrainConfig, train_run

PROFILES = ("quick", "full")
BASELINE, NO_BALANCE, SWITCH, FINE_GRAINED = "top2", "top2-alpha0", "switch-top1", "deepseek-moe"
AUX_FREE, COSINE, DENSE_ACTIVE, DENSE_TOTAL = "deepseek-v3-auxfree", "cosine-top2", "dense-active", "dense-total"
SOFT, EXPERT_CHOICE, DENSE_MASKED = "soft-moe", "expert-choice", "dense-masked"
SUMMARY_FILE = "training.json"


@dataclass(frozen=True)
class Profile:
    """A named scale: the corpus, the baseline LM, the training recipe, the seeds, parallelism."""

    name: str
    corpus: CorpusConfig
    lm: LMConfig                 # the baseline (top-2 of 8); the other runs are derived from it
    train: TrainConfig
    seeds: tuple[int, ...]       # seeds of the baseline and α = 0 runs (the first seeds every run)
    jobs: int | None = None      # runs trained at once (one process, one thread each); None: min(2, CPUs)
    bias_update_rate: float = 1e-2  # DeepSeek-V3's γ: 10× the report's 1e-3, for 10²–10³ steps, not 10⁵

    def to_dict(self) -> dict:
        return {"name": self.name, "corpus": asdict(self.corpus), "lm": self.lm.to_dict(),
                "train": asdict(self.train), "seeds": list(self.seeds), "jobs": self.jobs,
                "bias_update_rate": self.bias_update_rate}


def profile(name: str = "quick") -> Profile:
    """The ``quick`` or ``full`` profile (timings measured on 2 CPU cores; see the module docstring)."""
    if name == "quick":
        return Profile(name="quick", corpus=CorpusConfig(chars_per_domain=200_000),
                       lm=LMConfig(vocab_size=2048, d_model=64, n_layer=2, n_head=4, seq_len=64,
                                   moe=MoESpec(num_experts=8, top_k=2, expert_intermediate=128)),
                       train=TrainConfig(steps=250, batch_size=16, warmup_steps=20, checkpoint_every=50),
                       seeds=(0,))
    if name == "full":
        return Profile(name="full", corpus=CorpusConfig(chars_per_domain=300_000),
                       lm=LMConfig(vocab_size=2048, d_model=128, n_layer=4, n_head=4, seq_len=128,
                                   moe=MoESpec(num_experts=8, top_k=2, expert_intermediate=256)),
                       train=TrainConfig(steps=500, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=40,
                                         checkpoint_every=100, eval_windows=64),
                       seeds=(0, 1, 2))
    raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {name!r}")


def standard_runs(p: Profile) -> list[RunSpec]:
    """Every run of profile ``p``, causal group first (see the module docstring)."""
    lm, tc, moe = p.lm, p.train, p.lm.moe
    no_balance = {**tc.aux, "load_balance": 0.0}
    fine = replace(moe, num_experts=4 * moe.num_experts, expert_intermediate=moe.expert_intermediate // 4,
                   top_k=4 * moe.top_k - 2, shared_experts=2, shared_intermediate=moe.expert_intermediate // 4)
    runs = []
    for i, seed in enumerate(p.seeds):
        suffix, t = ("" if i == 0 else f"-seed{seed}"), replace(tc, seed=seed)
        runs.append(RunSpec(BASELINE + suffix, lm, t, knob="baseline: top-2 of 8, α = 0.01"))
        runs.append(RunSpec(NO_BALANCE + suffix, lm, replace(t, aux=no_balance), knob="α = 0 (no load balancing)"))
    runs += [
        RunSpec(SWITCH, replace(lm, moe=replace(moe, router="switch", top_k=1, capacity_factor=1.25)), tc,
                knob="Switch top-1, capacity factor 1.25"),
        RunSpec(FINE_GRAINED, replace(lm, moe=fine), tc,
                knob=f"fine-grained {fine.num_experts} experts of I={fine.expert_intermediate}, k={fine.top_k}, "
                     f"+{fine.shared_experts} shared"),
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
                only: tuple[str, ...] | None = None) -> dict[str, RunResult]:
    """Train every run of ``p`` (resuming any that were interrupted) under ``out_dir/runs/``.

    ``jobs`` (default ``p.jobs``) runs train at once, each in its own worker process
    (``python -m moescope.lab._worker``) with a single thread, so results do not depend on
    ``jobs``; with ``jobs=1`` every run trains in this process. ``only`` restricts to named runs.
    Writes ``out_dir/training.json`` (profile, corpus and tokenizer provenance, results) and
    returns the results by run name, in :func:`standard_runs` order.
    """
    p = profile(p) if isinstance(p, str) else p
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    corpus, tokens = prepare(p, out_dir)
    specs = standard_runs(p)
    if only is not None:
        unknown = set(only) - {s.name for s in specs}
        if unknown:
            raise ValueError(f"unknown run names {sorted(unknown)}; known: {', '.join(s.name for s in specs)}")
        specs = [s for s in specs if s.name in only]
    prep_time = time.perf_counter() - t0
    jobs = jobs if jobs is not None else p.jobs if p.jobs is not None else min(2, os.cpu_count() or 1)
    results: dict[str, RunResult] = {}
    runs_dir = out_dir / "runs"
    if jobs <= 1:
        for spec in specs:
            results[spec.name] = train_run(spec, tokens, runs_dir, progress=progress)
    else:
        results = _run_parallel(specs, tokens, runs_dir, jobs, progress)
    results = {s.name: results[s.name] for s in specs}
    total = time.perf_counter() - t0
    write_json_atomic(out_dir / SUMMARY_FILE, json.loads(json.dumps({
        "profile": p.to_dict(), "corpus": corpus.provenance(), "tokens": tokens.provenance(),
        "runs": {name: r.to_dict() for name, r in results.items()},
        "specs": {s.name: s.to_dict() for s in specs},
        "wall_time": {"prepare": prep_time, "total": total, "jobs": jobs,
                      "runs_cpu": sum(r.cpu_time for r in results.values())}}, default=str)))
    return results


def _run_parallel(specs: list[RunSpec], tokens: CorpusTokens, runs_dir: Path, jobs: int,
                  progress: bool) -> dict[str, RunResult]:
    """Train ``specs`` in up to ``jobs`` worker processes (``moescope.lab._worker``) at a time.

    Each worker's output goes to ``<run>/worker.log``; a failed worker stops the others and
    raises with the tail of its log (completed runs keep their results, interrupted ones
    their checkpoints: calling again resumes them).
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(save_tokens(tokens), buf)
    tokens_path = write_bytes_atomic(runs_dir / ".tokens.pt", buf.getvalue())
    # longest first (total parameters × steps as the cost proxy): the last run to finish is a short one
    pending = sorted(specs, key=lambda s: -total_params(s.lm) * s.train.steps)
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    results: dict[str, RunResult] = {}
    with _runs_bar(progress, len(specs)) as advance:
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    spec = pending.pop(0)
                    run_dir = runs_dir / spec.name
                    spec_path = write_json_atomic(run_dir / "spec.json", spec.to_dict())
                    log = open(run_dir / "worker.log", "wb")  # closed when the worker ends (below)
                    cmd = [sys.executable, "-m", "moescope.lab._worker", str(spec_path), str(tokens_path),
                           str(runs_dir)]
                    running[spec.name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
                for name, (proc, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log.close()
                    del running[name]
                    if proc.returncode != 0:
                        tail = (runs_dir / name / "worker.log").read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"run {name!r} failed (exit code {proc.returncode}); its log ends:\n{tail}")
                    r = RunResult.from_dict(json.loads((runs_dir / name / RESULT_FILE).read_text()))
                    results[name] = r
                    advance(f"{name}: val {r.val_loss:.3f}")
                time.sleep(0.1)
        finally:
            for proc, log in running.values():
                proc.kill()
                proc.wait()
                log.close()
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
