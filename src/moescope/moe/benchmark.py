"""``moescope bench moe``: the MoE layer against transformers' experts and against the roofline.

In one process: measure the machine (dense GEMM FLOP/s in each dtype, memory bandwidth, the
bfloat16 instructions the CPU has: AMX, AVX-512 BF16 or none), then for each dtype (float32 and
bfloat16 by default), shape and token count build a transformers ``MixtralSparseMoeBlock`` from a
real ``MixtralConfig`` with random weights (drawn in float32, the same for every dtype, then cast),
lift it with :func:`moescope.moe.from_hf` (same weights, same dtype) and time, forward and
forward+backward, everything in that dtype:

* moescope's layer with ``dispatch="auto"``, and each other dispatch path but ``reference``;
* transformers' ``eager`` experts (a loop over the experts that received tokens);
* transformers' ``grouped_mm`` experts (``torch.nn.functional.grouped_mm``; skipped, with
  the reason, where it fails; the kernel that actually ran is recorded);
* the dense GEMMs of the same shapes: the router GEMM and one GEMM per projection per expert
  hit, with that expert's token count as rows (and, for forward+backward, each one's input-
  and weight-gradient GEMM), on contiguous operands and nothing else. It shows what this
  machine's BLAS makes of the case's GEMM shapes, which the roofline's single large GEMM rate
  does not: at small T the per-expert GEMMs have few rows and run far below that rate.

Each time is the median of several runs after warm-up runs; the implementations of a case
run in interleaved rounds, so load from other processes slows them alike. Before each timed
run a buffer of twice the last-level cache is read (:func:`cache_flush`), so every
implementation starts with its weights out of cache, as a layer does in a model whose other
layers ran in between. Without it the second of two implementations sharing weights (moescope's
paths share the layer's, transformers' two the block's) found them partly cached: at T=16 the
same moescope path timed 3–9% faster run second than run first. The roofline of a
case is

    max(active FLOPs / GEMM FLOP/s, touched expert-weight bytes / bandwidth)

with, per forward, active FLOPs = 2·T·k·(3·H·I) (gate, up and down projections of the k
chosen SwiGLU experts) + 2·T·H·E (the router GEMM), and touched bytes = (number of experts
that receive at least one token) · 3·H·I · (4 bytes in float32, 2 in bfloat16: weights read
once); the GEMM rate is the probe's in the row's dtype, the bandwidth (bytes/s) the same. For
forward+backward both are tripled: the backward does two GEMMs per forward GEMM (input and
weight gradients) and reads the touched weights again and writes their gradients (the
zero gradients of experts that got no token are not counted). Activations, the router
weight and the token gather/scatter are not counted; nor is a GEMM's lower efficiency on
small matrices, so the roofline is a floor no implementation reaches exactly.

Each row also holds moescope's time over transformers' faster path of the two (``÷best HF``).
"""

from __future__ import annotations

import glob
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.moe.dispatch import METHODS, auto_method
from moescope.moe.lift import from_hf

BYTES_PER_VALUE = 4  # float32: the probes' buffers and the cache flush
# Real MoE checkpoints are stored in bfloat16 (and run in it on GPUs); float32 is the training default.
DTYPES = ("float32", "bfloat16")
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_SHORT = {"float32": "fp32", "bfloat16": "bf16"}


@dataclass(frozen=True)
class MoeShape:
    """One benchmarked MoE layer: H, I (per expert), E experts, k per token."""

    name: str
    hidden: int
    intermediate: int
    num_experts: int
    top_k: int


SHAPES = (
    MoeShape("coarse", hidden=512, intermediate=1024, num_experts=8, top_k=2),   # Mixtral's proportions
    MoeShape("fine", hidden=512, intermediate=128, num_experts=64, top_k=6),     # DeepSeek-MoE-like fine grain
)
TOKENS = (16, 64, 1024, 4096)   # decode-like batches (weight-bound) to prefill-like (GEMM-bound)
QUICK_TOKENS = (16, 1024)
PASSES = ("forward", "forward+backward")


@dataclass(frozen=True)
class _Effort:
    gemm_size: int        # n of the n×n×n GEMM probe (one per dtype)
    copy_values: int      # float32 values in the bandwidth probe (2 buffers)
    probe_repeats: int
    warmup: int
    min_repeats: int
    max_repeats: int
    budget_s: float       # time per measured implementation, within min/max repeats


# At least 7 rounds: on a shared VM single runs of the 0.5 s cases were seen 50% slow, and a median
# of 3 then follows one outlier (the two moescope columns running the same code differed by 40%).
_FULL = _Effort(gemm_size=2048, copy_values=32 * 2**20, probe_repeats=7, warmup=2, min_repeats=7, max_repeats=25,
              budget_s=1.5)
_QUICK = _Effort(gemm_size=1024, copy_values=8 * 2**20, probe_repeats=5, warmup=1, min_repeats=2, max_repeats=3,
               budget_s=0.05)


def parse_dtypes(dtypes: str | Sequence[str]) -> tuple[str, ...]:
    """``"float32,bfloat16"`` (or a sequence of names) -> the names in order, each once; a
    ValueError naming any name not in :data:`DTYPES`."""
    names = [n.strip() for n in dtypes.split(",")] if isinstance(dtypes, str) else list(dtypes)
    bad = [n for n in names if n not in DTYPES]
    if not names or bad:
        raise ValueError(f"dtype must be one or more of {', '.join(DTYPES)} (comma-separated); "
                         f"got {', '.join(map(repr, bad)) if bad else 'none'}")
    return tuple(dict.fromkeys(names))


def measure_machine(*, quick: bool = False, dtypes: Sequence[str] = DTYPES) -> dict:
    """Dense GEMM throughput per dtype and memory bandwidth of this process's CPU threads.

    * ``gemm_flops``: {dtype: 2·n³ / t} for an n×n by n×n ``torch.mm`` in that dtype (n = 2048,
      or 1024 with ``quick``), best of several runs after a warm-up.
    * ``copy_bytes_per_s``: 2·N·4 / t for ``dst.copy_(src)`` of N float32 values (read plus
      write bytes; N = 32 Mi = 128 MiB per buffer, 8 Mi with ``quick``), best of several.
    * ``read_bytes_per_s``: N·4 / t for ``src.sum()`` (bytes read), best of several.
    * ``bandwidth``: the larger of the two, used by the roofline (bytes/s, whatever the dtype).
    * ``isa``: the CPU's bfloat16 matrix instructions (:func:`cpu_bf16_isa`) and ``isa_flags``.
    """
    effort = _QUICK if quick else _FULL
    n = effort.gemm_size
    gemm = {}
    for name in parse_dtypes(dtypes):
        dtype = _TORCH_DTYPES[name]
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        c = torch.empty(n, n, dtype=dtype)
        gemm[name] = 2 * n**3 / _best(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), effort.probe_repeats)
    src = torch.randn(effort.copy_values)
    dst = torch.empty_like(src)
    copy = _best(lambda: dst.copy_(src), effort.probe_repeats)
    read = _best(src.sum, effort.probe_repeats)
    nbytes = effort.copy_values * BYTES_PER_VALUE
    copy_bw, read_bw = 2 * nbytes / copy, nbytes / read
    flags = _cpu_flags()
    return {"gemm_flops": gemm, "gemm_size": n, "copy_bytes_per_s": copy_bw, "read_bytes_per_s": read_bw,
            "bandwidth": max(copy_bw, read_bw), "probe_bytes": nbytes, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": _transformers_version(), "cpu": cpu_name(),
            "python": platform.python_version(), "isa": cpu_bf16_isa(flags),
            "isa_flags": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16"}),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def roofline(*, tokens: int, hidden: int, intermediate: int, num_experts: int, top_k: int, experts_hit: int,
             backward: bool, gemm_flops: float, bandwidth: float, bytes_per_value: int = BYTES_PER_VALUE) -> dict:
    """The roofline time of one SwiGLU MoE layer call (conventions in the module docstring);
    ``gemm_flops`` is the rate in the weights' dtype, ``bytes_per_value`` their size (4 float32, 2 bfloat16).

    Returns ``flops``, ``bytes``, ``compute_s`` = flops / gemm_flops, ``memory_s`` = bytes /
    bandwidth, ``roofline_s`` (their maximum) and ``bound`` ("compute" or "memory").
    """
    per_expert = 3 * hidden * intermediate                      # gate, up, down weights
    flops = 2 * tokens * top_k * per_expert + 2 * tokens * hidden * num_experts
    nbytes = experts_hit * per_expert * bytes_per_value
    if backward:
        flops, nbytes = 3 * flops, 3 * nbytes
    compute_s, memory_s = flops / gemm_flops, nbytes / bandwidth
    return {"flops": flops, "bytes": nbytes, "compute_s": compute_s, "memory_s": memory_s,
            "roofline_s": max(compute_s, memory_s), "bound": "compute" if compute_s >= memory_s else "memory"}


def case_count(*, quick: bool = False, dtypes: Sequence[str] = DTYPES) -> int:
    """How many (dtype, shape, tokens, pass) cases :func:`bench_moe` times by default."""
    return len(parse_dtypes(dtypes)) * len(SHAPES) * len(QUICK_TOKENS if quick else TOKENS) * len(PASSES)


def bench_moe(*, quick: bool = False, shapes: tuple[MoeShape, ...] = SHAPES, tokens: tuple[int, ...] | None = None,
              dtypes: str | Sequence[str] = DTYPES, seed: int = 0,
              on_case: Callable[[str], None] | None = None) -> dict:
    """Measure the machine, then time every (dtype, shape, tokens, pass); see the module docstring.

    Returns ``{"machine": ..., "rows": [...]}``: the machine probed before and after the
    timings (:func:`measure_machine`; the higher throughputs count), and one row per (dtype, shape,
    tokens, pass) with the ``dtype`` name, the shape, ``experts_hit``, the :func:`roofline` fields
    (in that dtype's GEMM rate and value size), ``times_s`` (median
    seconds per implementation), ``best_s`` (fastest run), ``repeats``, ``skipped``
    (implementation -> reason), ``hf_grouped_mm_kernel``, ``max_abs_diff`` (moescope against
    HF eager in the same dtype, forward) and the ratios ``moescope_vs_hf_eager``,
    ``moescope_vs_hf_grouped_mm``, ``moescope_vs_hf_best`` (over the faster of the two, named in
    ``hf_best``), ``moescope_vs_roofline``, ``moescope_vs_dense_gemms`` and ``dense_gemms_vs_roofline``
    (None where a time is missing); ``dense_gemms`` in the times is the dense GEMMs of the same
    shapes. ``dtypes``: names from :data:`DTYPES` (or one comma-separated string). ``on_case`` is
    called with a label before each case (for progress bars).
    """
    tokens = tokens if tokens is not None else (QUICK_TOKENS if quick else TOKENS)
    if not tokens or min(tokens) < 1:
        raise ValueError(f"tokens must be positive integers; got tokens={tokens!r}")
    dtypes = parse_dtypes(dtypes)
    effort = _QUICK if quick else _FULL
    before = measure_machine(quick=quick, dtypes=dtypes)
    flush = cache_flush()
    rows = []
    for dtype, shape in ((d, s) for d in dtypes for s in shapes):
        block = _hf_block(shape, seed, dtype)
        layer = from_hf(block).eval()
        for t in tokens:
            x = torch.randn(1, t, shape.hidden, generator=torch.Generator().manual_seed(seed + t))
            x = x.to(_TORCH_DTYPES[dtype])
            with torch.no_grad():
                out = layer(x)
                block.experts.config._experts_implementation = "eager"
                diff = float((out.hidden - block(x)).abs().max())
            counts = out.routing.tokens_per_expert.tolist()
            hit = sum(n > 0 for n in counts)
            kernel = _grouped_mm_kernel(block, x)
            for pass_ in PASSES:
                if on_case is not None:
                    on_case(f"{_SHORT[dtype]} {shape.name} T={t} {pass_}")
                row = {"dtype": dtype, **asdict(shape), "shape": shape.name, "tokens": t, "pass": pass_,
                       "experts_hit": hit, "max_abs_diff": diff, "hf_grouped_mm_kernel": kernel,
                       "auto_method": auto_method(out.routing.indices, layer.experts)}
                del row["name"]
                row.update(_time_case(block, layer, x, shape, counts, pass_ != "forward", effort, flush))
                rows.append(row)
    machine = _faster(before, measure_machine(quick=quick, dtypes=dtypes))
    for row in rows:
        row.update(roofline(tokens=row["tokens"], hidden=row["hidden"], intermediate=row["intermediate"],
                            num_experts=row["num_experts"], top_k=row["top_k"], experts_hit=row["experts_hit"],
                            backward=row["pass"] != "forward", gemm_flops=machine["gemm_flops"][row["dtype"]],
                            bandwidth=machine["bandwidth"],
                            bytes_per_value=_TORCH_DTYPES[row["dtype"]].itemsize))
        _ratios(row)
    return {"machine": machine, "rows": rows}


def _faster(first: dict, second: dict) -> dict:
    """The machine probed before and after the timings: the higher of each throughput (a
    probe slowed by other processes would make the roofline too lenient), both probes kept."""
    keys = ("copy_bytes_per_s", "read_bytes_per_s", "bandwidth")
    gemm = {d: max(first["gemm_flops"][d], second["gemm_flops"][d]) for d in first["gemm_flops"]}
    return {**first, **{k: max(first[k], second[k]) for k in keys}, "gemm_flops": gemm,
            "probes": [{k: p[k] for k in ("gemm_flops", *keys)} for p in (first, second)]}


def _time_case(block: nn.Module, layer: nn.Module, x: Tensor, shape: MoeShape, counts: list[int], backward: bool,
               effort: _Effort, flush: Callable[[], None]) -> dict:
    runs: dict[str, Callable[[Tensor], Tensor]] = {}
    for method in (m for m in METHODS if m != "reference"):
        runs["moescope" if method == "auto" else f"moescope_{method}"] = _layer_call(layer, method)
    for impl in ("eager", "grouped_mm"):
        runs[f"hf_{impl}"] = _block_call(block, impl)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    params = [*block.parameters(), *layer.parameters()]
    steps, first, skipped = {}, {}, {}
    for name, call in runs.items():
        if backward:
            xg = x.clone().requires_grad_(True)

            def step(call=call, xg=xg):
                for p in params:
                    p.grad = None
                xg.grad = None
                call(xg).backward(grad_out)
        else:
            def step(call=call):
                with torch.no_grad():
                    call(x)
        try:
            first[name] = _warm(step, effort, flush)
        except Exception as err:  # a failing reference path is reported, not fatal
            skipped[name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            continue
        steps[name] = step
    steps["dense_gemms"] = _dense_gemms(shape, counts, x.shape[1], backward, x.dtype)
    first["dense_gemms"] = _warm(steps["dense_gemms"], effort, flush)
    # Interleaved rounds (one run of each implementation per round): a burst of load from
    # other processes slows every implementation of a round alike instead of one of them.
    per_round = max(sum(first.values()), 1e-9)
    rounds = min(effort.max_repeats, max(effort.min_repeats, int(effort.budget_s * len(steps) / per_round)))
    samples = {name: [t] for name, t in first.items()}
    for _ in range(rounds - 1):
        for name, step in steps.items():
            flush()
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    layer.dispatch = "auto"
    return {"times_s": {n: statistics.median(v) for n, v in samples.items()},
            "best_s": {n: min(v) for n, v in samples.items()},
            "repeats": {n: len(v) for n, v in samples.items()}, "skipped": skipped}


def _dense_gemms(shape: MoeShape, counts: list[int], tokens: int, backward: bool,
                 dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """The layer's GEMMs alone, on dense contiguous operands into preallocated outputs: the router's
    (T, H)·(H, E) and, per expert with n > 0 tokens, (n, H)·(H, 2I) and (n, I)·(I, H); with ``backward``
    also each one's input gradient (e.g. (n, 2I)·(2I, H)) and weight gradient (e.g. (2I, n)·(n, H)). No
    gather, activation or scatter, and no fresh (page-faulting) gradient buffers: what MKL makes of
    these shapes on this machine (in ``dtype``), a floor for any implementation that runs one GEMM per expert."""
    h, i, e = shape.hidden, shape.intermediate, shape.num_experts
    dims = [(tokens, h, e)] + [d for n in counts if n > 0 for d in ((n, h, 2 * i), (n, i, h))]   # (m, k, n)
    g = torch.Generator().manual_seed(0)
    ops = []
    for m, k, n in dims:
        a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
        ops.append((a, b, torch.empty(m, n, dtype=dtype)))
        if backward:
            c = torch.randn(m, n, generator=g).to(dtype)
            ops.append((c, b.t().contiguous(), torch.empty(m, k, dtype=dtype)))   # input gradient (m, n)·(n, k)
            ops.append((a.t().contiguous(), c, torch.empty(k, n, dtype=dtype)))   # weight gradient (k, m)·(m, n)

    def step() -> None:
        for a, b, out in ops:
            torch.mm(a, b, out=out)
    return step


def _ratios(row: dict) -> dict:
    """moescope's time over HF eager's, HF grouped_mm's, the faster of the two (``hf_best``), the
    roofline and the dense GEMMs of the same shapes, and the dense GEMMs' over the roofline: of the
    medians, and (``*_best``) of the fastest runs, which other processes' load disturbs less."""
    for suffix, times in (("", row["times_s"]), ("_best", row["best_s"])):
        ms = times.get("moescope")
        hf = {n: times[n] for n in ("hf_eager", "hf_grouped_mm") if n in times}
        best = min(hf, key=hf.get) if hf else None
        row[f"hf_best{suffix}"] = best
        for name, other in (("hf_eager", times.get("hf_eager")), ("hf_grouped_mm", times.get("hf_grouped_mm")),
                            ("hf_best", hf.get(best)), ("roofline", row["roofline_s"]),
                            ("dense_gemms", times.get("dense_gemms"))):
            row[f"moescope_vs_{name}{suffix}"] = None if ms is None or other is None else ms / other
        dense = times.get("dense_gemms")
        row[f"dense_gemms_vs_roofline{suffix}"] = None if dense is None else dense / row["roofline_s"]
    return row


def _layer_call(layer: nn.Module, method: str) -> Callable[[Tensor], Tensor]:
    def call(x: Tensor) -> Tensor:
        layer.dispatch = method
        return layer(x).hidden
    return call


def _block_call(block: nn.Module, impl: str) -> Callable[[Tensor], Tensor]:
    def call(x: Tensor) -> Tensor:
        block.experts.config._experts_implementation = impl
        return block(x)
    return call


def _hf_block(shape: MoeShape, seed: int, dtype: str = "float32") -> nn.Module:
    """A ``MixtralSparseMoeBlock`` from a real ``MixtralConfig``, weights N(0, 0.02²) (Mixtral's
    ``initializer_range``) drawn in float32 (the same for every dtype), cast to ``dtype``, eval mode."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                           num_local_experts=shape.num_experts, num_experts_per_tok=shape.top_k)
    config._experts_implementation = "eager"
    block = MixtralSparseMoeBlock(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * config.initializer_range)
    return block.to(_TORCH_DTYPES[dtype]).eval()


def _grouped_mm_kernel(block: nn.Module, x: Tensor) -> str:
    """Which grouped GEMM transformers' ``grouped_mm`` experts really ran on ``x``: torch's
    kernel (seen by wrapping ``torch.nn.functional.grouped_mm`` and ``torch._grouped_mm`` for
    one forward) or transformers' own fallback, a loop of ``torch.mm``."""
    block.experts.config._experts_implementation = "grouped_mm"
    with ExitStack() as stack:
        spies = {f"torch.{'nn.functional.' if owner is F else ''}{name}":
                 stack.enter_context(mock.patch.object(owner, name, wraps=getattr(owner, name)))
                 for owner, name in ((F, "grouped_mm"), (torch, "_grouped_mm")) if hasattr(owner, name)}
        try:
            with torch.no_grad():
                block(x)
        except Exception as err:  # the check must not stop the benchmark; the timing reports the failure
            return f"failed: {type(err).__name__}"
        finally:
            block.experts.config._experts_implementation = "eager"
    used = [name for name, spy in spies.items() if spy.called]
    return used[0] if used else "transformers fallback (torch.mm per expert)"


def _warm(step: Callable[[], None], effort: _Effort, flush: Callable[[], None]) -> float:
    """``effort.warmup`` warm-up runs (fewer if they take over ``budget_s``), then one timed run
    after ``flush``."""
    start = time.perf_counter()
    for _ in range(effort.warmup):
        step()
        if time.perf_counter() - start > effort.budget_s:
            break
    flush()
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def cache_flush(last_level_bytes: int | None = None) -> Callable[[], None]:
    """A function that reads a float32 buffer of twice the last-level cache (from sysfs; 64 MiB
    when unknown, at most 256 MiB), evicting whatever the previous run left there."""
    size = last_level_bytes if last_level_bytes is not None else _last_level_cache_bytes()
    size = min(2 * size if size else 64 * 2**20, 256 * 2**20)
    buf = torch.ones(max(size // BYTES_PER_VALUE, 1))
    return lambda: buf.sum()


def _last_level_cache_bytes() -> int | None:
    """The largest CPU cache in /sys/devices/system/cpu/cpu0/cache (e.g. "36608K"), or None."""
    sizes = []
    for entry in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(entry) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def _best(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    """The ``flags`` of the first processor in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_isa(flags: set[str] | None = None) -> str:
    """The bfloat16 matrix instructions of this CPU, from its /proc/cpuinfo ``flags``: ``"AMX"``
    (``amx_bf16`` and ``amx_tile``: tile matrix multiply, which oneDNN uses for bfloat16 GEMMs),
    ``"AVX-512 BF16"`` (``avx512_bf16``: bfloat16 dot products in vector registers) or ``"none"``
    (bfloat16 is widened to float32 to compute, and runs no faster than float32)."""
    flags = _cpu_flags() if flags is None else flags
    if {"amx_bf16", "amx_tile"} <= flags:
        return "AMX"
    return "AVX-512 BF16" if "avx512_bf16" in flags else "none"


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def machine_lines(machine: dict) -> list[str]:
    """The machine measurements as printable lines (for reproducibility)."""
    probes = machine.get("probes", [machine])
    n = machine["gemm_size"]
    gemm = [f"{machine['gemm_flops'][d] / 1e9:.0f} GFLOP/s {d} (probes before / after the timings: "
            + " / ".join(f"{p['gemm_flops'][d] / 1e9:.0f}" for p in probes) + ")" for d in machine["gemm_flops"]]
    bw = " / ".join(f"{p['bandwidth'] / 1e9:.1f}" for p in probes)
    flags = " ".join(machine.get("isa_flags", [])) or "none of amx_bf16, amx_tile, avx512_bf16"
    return [f"CPU: {machine['cpu']}; torch {machine['torch']}, transformers {machine['transformers']}, "
            f"python {machine['python']}; {machine['threads']} threads (torch.get_num_threads())",
            f"bfloat16 ISA: {machine['isa']} (cpu flags: {flags}; torch CPU capability "
            f"{machine.get('cpu_capability', '?')})",
            f"GEMM ({n}³ torch.mm, best run): " + "; ".join(gemm),
            f"Bandwidth: {machine['bandwidth'] / 1e9:.1f} GB/s (the higher of copy "
            f"{machine['copy_bytes_per_s'] / 1e9:.1f} GB/s read+write and sum {machine['read_bytes_per_s'] / 1e9:.1f}"
            f" GB/s read, "
            f"{machine['probe_bytes'] / 2**20:.0f} MiB buffers; probes: {bw})",
            *([f"Memory: {machine['malloc']}"] if "malloc" in machine else [])]


def moe_table(result: dict, stat: str = "median"):
    """A rich table of the rows: the dtype, the path ``auto`` chose, the roofline in that dtype (m/c:
    memory- or compute-bound), the dense GEMMs of the same shapes, ms per implementation (``stat``:
    the ``median`` or the ``best`` run), then moescope (auto) divided by HF eager, by HF grouped_mm,
    by the faster of those two, by the roofline and by the dense GEMMs."""
    from rich.table import Table

    if stat not in ("median", "best"):
        raise ValueError(f"stat must be 'median' or 'best'; got stat={stat!r}")
    key, suffix = ("times_s", "") if stat == "median" else ("best_s", "_best")
    rows = result["rows"]
    labels = {"dense_gemms": "dense GEMMs of the same shapes", "moescope": "moescope",
              **{f"moescope_{m}": m for m in METHODS if m not in ("auto", "reference")},
              "hf_eager": "HF eager", "hf_grouped_mm": "HF grouped"}
    impls = [k for k in labels if any(k in r[key] for r in rows)]
    table = Table(title=f"MoE layer forward / forward+backward: {stat} ms; ratios = moescope ÷ other")
    for col in ("dtype", "shape", "T", "pass", "hit", "auto runs", "roofline", *(labels[k] for k in impls), "÷eager",
                "÷grouped", "÷best HF", "÷roofline", "÷dense"):
        table.add_column(col, justify="left" if col in ("dtype", "shape", "pass") else "right")

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v * 1e3:.2f}"

    def ratio(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    for r in rows:
        table.add_row(_SHORT[r["dtype"]], r["shape"], str(r["tokens"]), "fwd" if r["pass"] == "forward" else "fwd+bwd",
                      f"{r['experts_hit']}/{r['num_experts']}", r.get("auto_method", "—"),
                      f"{ms(r['roofline_s'])} {r['bound'][0]}",
                      *(ms(r[key].get(k)) for k in impls), ratio(r[f"moescope_vs_hf_eager{suffix}"]),
                      ratio(r[f"moescope_vs_hf_grouped_mm{suffix}"]), ratio(r[f"moescope_vs_hf_best{suffix}"]),
                      ratio(r[f"moescope_vs_roofline{suffix}"]),
                      ratio(r[f"moescope_vs_dense_gemms{suffix}"]))
    return table
