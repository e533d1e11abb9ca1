"""``moescope bench parallel``: expert parallelism over 1, 2 and 4 CPU processes.

For each world size N, spawn N processes that join a gloo process group on a free localhost
port. Each process uses one torch thread (``torch.set_num_threads(1)``), so N processes
need N cores; with more processes than cores they share the cores, which slows every
process alike. Every process builds the same ``MoELayer`` (top-k ``TopKRouter`` over E
SwiGLU experts, same seed), shards it with :meth:`ExpertParallelMoE.from_layer` and draws
its own T tokens. Each rank then times, forward and forward+backward, in interleaved
rounds that start together (a barrier before each run):

* ``plain``: the whole ``MoELayer`` on the rank's T tokens (no communication);
* ``ep``: the ``ExpertParallelMoE`` on the same tokens;
* ``ep_profiled``: the same under :meth:`ExpertParallelMoE.profile`, for the time split.

A time is the mean over ranks of one round, then the median over rounds. The split —
``routing``, ``communication``, ``experts`` and ``rest`` (combine, backward of the router
and of the gather/scatter, Python) — is each phase's median over the profiled total; a
collective's time includes waiting for the slowest rank. Ratios compare time per token:
with T tokens per rank, ``vs_single`` = t_EP(N) / t_plain(1 process) (1.0 = N ranks handle
N·T tokens in the time one process handles T), ``vs_plain_same_n`` = t_EP(N) / t_plain(N),
the plain layer timed in the same N processes at the same time (same sharing of the cores).

All-to-all volume is counted from the split sizes (:class:`EPProfile`): hidden-state bytes
sent to other ranks, out (tokens) and back (outputs), per routed (token, expert) pair and
per input token, summed over ranks. With uniform routing a pair's expert lives on another
rank with probability (N−1)/N, so the expected forward volume per input token is

    2 · k · H · 4 bytes · (N − 1) / N        (float32 rows, out and back)

and forward+backward moves twice that (the gradients take the same routes back). The
expert ids (8 bytes per remote pair) and the counts (8 bytes per rank pair) are reported
separately.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moescope.moe.benchmark import SHAPES, MoeShape, cpu_name
from moescope.moe.experts import Experts
from moescope.moe.layer import MoELayer
from moescope.moe.parallel import ExpertParallelMoE
from moescope.moe.routers import TopKRouter

BYTES_PER_VALUE = 4  # float32
WORLD_SIZES = (1, 2, 4)
TOKENS = 1024        # per rank: prefill-like, GEMM-bound on one thread
QUICK_TOKENS = 256
QUICK_SHAPES = SHAPES[:1]  # coarse (Mixtral's proportions) only
PASSES = ("forward", "forward+backward")
PROCESSES_PER_CORE = 4  # beyond this the benchmark measures the scheduler, not the layer
TIMEOUT = datetime.timedelta(minutes=5)  # a collective that waits longer than this means a rank died


@dataclass(frozen=True)
class _Effort:
    warmup: int
    repeats: int


_FULL, _QUICK = _Effort(warmup=2, repeats=7), _Effort(warmup=1, repeats=3)


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_world_sizes(world_sizes: tuple[int, ...], shapes: tuple[MoeShape, ...]) -> None:
    """Raise ``ValueError`` for a world size that cannot shard every shape's experts or that
    would put more than ``PROCESSES_PER_CORE`` processes on each core of this machine."""
    if not world_sizes:
        raise ValueError("world_sizes must name at least one world size, e.g. (1, 2, 4)")
    limit = PROCESSES_PER_CORE * cores()
    for n in world_sizes:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"world sizes must be positive integers; got {n!r} in world_sizes={world_sizes!r}")
        if n > limit:
            raise ValueError(f"world size {n} is more than this machine can run: {cores()} cores, at most "
                             f"{PROCESSES_PER_CORE} single-thread processes per core (world size <= {limit})")
        for shape in shapes:
            if shape.num_experts % n:
                raise ValueError(f"world size {n} does not divide the {shape.num_experts} experts of shape "
                                 f"{shape.name!r}; use a divisor of {shape.num_experts}")


def expected_bytes_per_token(*, hidden: int, top_k: int, world: int, backward: bool = False) -> float:
    """2·k·H·4·(N−1)/N: float32 hidden-state bytes per input token sent to other ranks, out and
    back, when each pair's expert is uniformly spread over the N ranks (twice that with backward)."""
    return 2 * top_k * hidden * BYTES_PER_VALUE * (world - 1) / world * (2 if backward else 1)


def bench_parallel(*, world_sizes: tuple[int, ...] = WORLD_SIZES, tokens: int | None = None,
                   shapes: tuple[MoeShape, ...] | None = None, quick: bool = False, seed: int = 0,
                   on_case: Callable[[str], None] | None = None) -> dict:
    """Time the expert-parallel layer over each world size; see the module docstring.

    Args:
        world_sizes: numbers of processes N (each must divide every shape's E).
        tokens: tokens per rank T (default 1024, or 256 with ``quick``).
        shapes: the MoE layers (default :data:`moescope.moe.benchmark.SHAPES`, coarse and
            fine-grained; with ``quick`` the coarse one).
        quick: fewer tokens, shapes and repeats.
        on_case: called with a label before each world size (for progress bars).

    Returns ``{"machine": ..., "rows": [...]}``, one row per (shape, pass, N) with the
    times, the split, the ratios and the bytes (see :func:`_row`). A world size of 1 is
    always run: it is the single-process baseline.
    """
    shapes = shapes if shapes is not None else (QUICK_SHAPES if quick else SHAPES)
    tokens = tokens if tokens is not None else (QUICK_TOKENS if quick else TOKENS)
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens (per rank) must be a positive integer; got tokens={tokens!r}")
    check_world_sizes(tuple(world_sizes), shapes)
    effort = _QUICK if quick else _FULL
    spec = {"shapes": [asdict(s) for s in shapes], "tokens": tokens, "seed": seed, "effort": asdict(effort)}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="moescope-ep-") as folder:
        for n in sorted({1, *world_sizes}):
            if on_case is not None:
                on_case(f"{n} process{'es' if n > 1 else ''}")
            mp.spawn(_worker, args=(n, _free_port(), spec, folder), nprocs=n, join=True)
            runs[n] = [json.loads(Path(folder, f"world{n}-rank{r}.json").read_text()) for r in range(n)]
    rows = [_row(shape, pass_, n, runs[n], runs[1], tokens)
            for shape in shapes for pass_ in PASSES for n in sorted(set(world_sizes))]
    machine = {"cpu": cpu_name(), "cores": cores(), "threads_per_process": 1, "torch": torch.__version__,
               "python": platform.python_version(), "backend": "gloo", "tokens_per_rank": tokens,
               "warmup": effort.warmup, "repeats": effort.repeats}
    return {"machine": machine, "rows": rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, spec: dict, folder: str) -> None:
    """One rank: time plain, EP and profiled EP for every shape and pass; write the samples."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    try:
        effort = _Effort(**spec["effort"])
        result = {}
        for shape in (MoeShape(**s) for s in spec["shapes"]):
            torch.manual_seed(spec["seed"])  # the same layer in every process
            plain = MoELayer(router=TopKRouter(shape.hidden, shape.num_experts, shape.top_k),
                             experts=Experts(shape.num_experts, shape.hidden, shape.intermediate))
            ep = ExpertParallelMoE.from_layer(plain)
            g = torch.Generator().manual_seed(spec["seed"] + 1 + rank)  # each rank its own tokens
            x = torch.randn(spec["tokens"], shape.hidden, generator=g)
            grad_out = torch.randn(x.shape, generator=g)
            for pass_ in PASSES:
                result[f"{shape.name}/{pass_}"] = _time_rank(plain, ep, x, grad_out, pass_ != "forward", effort)
        Path(folder, f"world{world}-rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _time_rank(plain: MoELayer, ep: ExpertParallelMoE, x: torch.Tensor, grad_out: torch.Tensor, backward: bool,
               effort: _Effort) -> dict:
    params = [*plain.parameters(), *ep.parameters()]

    def run(layer) -> None:
        if backward:
            for p in params:
                p.grad = None
            xg = x.detach().requires_grad_(True)
            layer(xg).hidden.backward(grad_out)
        else:
            with torch.no_grad():
                layer(x)

    def profiled() -> None:
        with ep.profile() as prof:
            run(ep)
        samples["profiles"].append(prof)

    calls = {"plain": lambda: run(plain), "ep": lambda: run(ep), "ep_profiled": profiled}
    samples: dict[str, list] = {name: [] for name in (*calls, "profiles")}
    for i in range(effort.warmup + effort.repeats):
        for name, call in calls.items():  # interleaved: a burst of load slows all three alike
            dist.barrier()
            start = time.perf_counter()
            call()
            if i >= effort.warmup:
                samples[name].append(time.perf_counter() - start)
    profiles = samples.pop("profiles")[effort.warmup:]
    last = profiles[-1]
    return {**samples, "phases": [dict(p.seconds) for p in profiles], "bytes_sent": dict(last.bytes_sent),
            "bytes_received": dict(last.bytes_received), "pairs": last.pairs, "remote_pairs": last.remote_pairs,
            "tokens": last.tokens}


SPLIT = ("routing", "communication", "experts")


def _row(shape: MoeShape, pass_: str, world: int, ranks: list[dict], single: list[dict], tokens: int) -> dict:
    """One table row from the per-rank samples of a world size (and the 1-process run)."""
    key, backward = f"{shape.name}/{pass_}", pass_ != "forward"
    case = [r[key] for r in ranks]

    def median_of_rank_means(values: Callable[[dict], list[float]], of: list[dict] = case) -> float:
        return statistics.median(statistics.fmean(col) for col in zip(*(values(c) for c in of), strict=True))

    ep, plain = median_of_rank_means(lambda c: c["ep"]), median_of_rank_means(lambda c: c["plain"])
    single_plain = median_of_rank_means(lambda c: c["plain"], [r[key] for r in single])
    profiled = median_of_rank_means(lambda c: c["ep_profiled"])
    seconds = {}
    for phase in SPLIT:
        names = (phase, f"{phase}_backward")
        seconds[phase] = median_of_rank_means(lambda c, names=names: [sum(p.get(n, 0.0) for n in names)
                                                                      for p in c["phases"]])
    seconds["rest"] = max(profiled - sum(seconds.values()), 0.0)
    sent = {name: sum(c["bytes_sent"].get(name, 0) for c in case) for name in
            ("tokens", "outputs", "tokens_grad", "outputs_grad", "expert_ids", "counts")}
    received = sum(sum(c["bytes_received"].values()) for c in case)
    hidden_bytes = sent["tokens"] + sent["outputs"] + sent["tokens_grad"] + sent["outputs_grad"]
    pairs, remote = sum(c["pairs"] for c in case), sum(c["remote_pairs"] for c in case)
    shape_fields = {k: v for k, v in asdict(shape).items() if k != "name"}
    return {**shape_fields, "shape": shape.name, "pass": pass_, "world_size": world, "tokens_per_rank": tokens,
            "oversubscribed": world > cores(), "ep_s": ep, "plain_s": plain, "single_plain_s": single_plain,
            "ep_profiled_s": profiled, "profile_overhead": profiled / ep - 1,
            "split_s": seconds, "split_share": {k: v / profiled for k, v in seconds.items()},
            "vs_single": ep / single_plain, "vs_plain_same_n": ep / plain,
            "tokens_per_s": world * tokens / ep, "pairs": pairs, "remote_pairs": remote,
            "hidden_bytes_sent": hidden_bytes, "index_bytes_sent": sent["expert_ids"] + sent["counts"],
            "bytes_sent_by_exchange": sent, "bytes_received": received,
            "bytes_per_pair": hidden_bytes / pairs, "bytes_per_token": hidden_bytes / (world * tokens),
            "expected_bytes_per_token": expected_bytes_per_token(hidden=shape.hidden, top_k=shape.top_k,
                                                                 world=world, backward=backward)}


def parallel_lines(result: dict) -> list[str]:
    """The machine and the thread policy as printable lines."""
    m = result["machine"]
    return [f"CPU: {m['cpu']}; {m['cores']} cores; torch {m['torch']}, python {m['python']}; {m['backend']} on "
            f"localhost",
            f"Threads: 1 torch thread per process (torch.set_num_threads(1)); N > {m['cores']} processes share the "
            f"{m['cores']} cores (marked N*)",
            f"T = {m['tokens_per_rank']} tokens per rank; median of {m['repeats']} rounds after {m['warmup']} "
            f"warm-up; expected bytes = 2·k·H·4·(N−1)/N per token, twice with the backward"]


def parallel_table(rows: list[dict]):
    """A rich table of the rows: ms per step on a rank, the ratios, the split of the profiled
    step and the all-to-all bytes. Each (shape, pass) starts with the single-process
    ``MoELayer`` baseline; N* marks more processes than cores."""
    from rich.table import Table

    table = Table(title="Expert parallelism over N CPU processes: ms per step, time per token ÷ baselines, "
                        "split of the step, hidden-state bytes to other ranks")
    for col in ("shape", "pass", "layer", "N", "ms", "÷1 proc", "÷plain@N", "routing", "comm", "experts", "rest",
                "tok/s", "B/pair", "B/token", "expected"):
        table.add_column(col, justify="left" if col in ("shape", "pass", "layer") else "right")
    seen = set()
    for r in rows:
        pass_ = "fwd" if r["pass"] == "forward" else "fwd+bwd"
        if (r["shape"], r["pass"]) not in seen:
            seen.add((r["shape"], r["pass"]))
            table.add_row(r["shape"], pass_, "MoELayer", "1", f"{r['single_plain_s'] * 1e3:.1f}", "1.00", "1.00",
                          *("—" for _ in range(4)), f"{r['tokens_per_rank'] / r['single_plain_s']:,.0f}", "0", "0",
                          "0")
        share = r["split_share"]
        table.add_row(r["shape"], pass_, "EP", f"{r['world_size']}{'*' if r['oversubscribed'] else ''}",
                      f"{r['ep_s'] * 1e3:.1f}", f"{r['vs_single']:.2f}", f"{r['vs_plain_same_n']:.2f}",
                      *(f"{share[k]:.0%}" for k in (*SPLIT, "rest")), f"{r['tokens_per_s']:,.0f}",
                      f"{r['bytes_per_pair']:,.0f}", f"{r['bytes_per_token']:,.0f}",
                      f"{r['expected_bytes_per_token']:,.0f}")
    return table
