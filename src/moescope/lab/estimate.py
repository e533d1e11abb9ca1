"""``moescope train --estimate``: how long a profile's training will take, before it starts.

Each distinct run of the profile (the seed-``train.seed`` run of every knob; its replicates cost
the same) is built at the profile's shape and timed for a few optimiser steps — the lab's own
:func:`~moescope.lab.train.train_step` on one thread, on random windows of a random token stream
of the profile's vocabulary — after untimed warm-up steps. A run's projected time is its median
step × its steps; the profile's wall time is the schedule :func:`~moescope.lab.runs.run_profile`
uses (longest run first onto the next idle worker of ``jobs``) replayed with those times.

What the projection leaves out, and says so: evaluation and checkpoints (noise beside the steps),
building the corpus and tokenizer, the lab's measurements after training, and contention between
the workers (the runs are timed one at a time, while two workers on two cores share memory
bandwidth and caches). A measurement, not a test.
"""

from __future__ import annotations

import heapq
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moescope.lab.model import TinyLM
from moescope.lab.train import BatchSampler, RunSpec, deterministic, make_optimizer, train_step


@dataclass(frozen=True)
class RunEstimate:
    """One knob's timing: ``step_ms`` the median of the timed steps, ``seconds`` for all its replicates."""

    name: str
    step_ms: float
    steps: int
    replicates: int

    @property
    def seconds(self) -> float:
        return self.step_ms / 1e3 * self.steps * self.replicates


def time_run(spec: RunSpec, *, timed_steps: int = 5, warmup_steps: int = 2, mask_id: int = 1) -> float:
    """Median seconds of one training step of ``spec`` (its threads, its batch, random tokens)."""
    if timed_steps < 1 or warmup_steps < 0:
        raise ValueError(f"timed_steps must be >= 1 and warmup_steps >= 0; got {timed_steps}, {warmup_steps}")
    cfg = spec.train
    gen = torch.Generator().manual_seed(cfg.seed)
    stream = torch.randint(2, spec.lm.vocab_size, (cfg.batch_size * (spec.lm.seq_len + 1) * 4,), generator=gen)
    times = []
    with deterministic(cfg.num_threads):
        torch.manual_seed(cfg.seed)
        model = TinyLM(spec.lm).train()
        optimizer = make_optimizer(model, cfg)
        sampler = BatchSampler(stream, seq_len=spec.lm.seq_len, batch_size=cfg.batch_size, objective=spec.objective,
                               mask_id=mask_id, mask_rate=cfg.mask_rate, seed=cfg.seed)
        for step in range(warmup_steps + timed_steps):
            t0 = time.perf_counter()
            train_step(model, optimizer, sampler, cfg, step)
            if step >= warmup_steps:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def schedule(seconds: list[float], jobs: int) -> float:
    """Wall time of ``seconds`` of work handed longest first to the next idle of ``jobs`` workers."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    free = [0.0] * min(jobs, max(len(seconds), 1))
    for s in sorted(seconds, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)


def estimate(specs: list[RunSpec], replicates: int, jobs: int, *, timed_steps: int = 5, warmup_steps: int = 2,
             on_run: Callable[[RunEstimate], None] | None = None) -> tuple[list[RunEstimate], float]:
    """Time each of ``specs`` (one per knob) and project the training wall time on ``jobs`` workers.

    Returns the per-knob estimates and the projected wall seconds of all ``len(specs) × replicates``
    runs. ``on_run`` is called after each knob is timed.
    """
    rows = []
    for spec in specs:
        row = RunEstimate(spec.name, 1e3 * time_run(spec, timed_steps=timed_steps, warmup_steps=warmup_steps),
                          spec.train.steps, replicates)
        rows.append(row)
        if on_run is not None:
            on_run(row)
    per_run = [r.step_ms / 1e3 * r.steps for r in rows for _ in range(replicates)]
    return rows, schedule(per_run, jobs)
