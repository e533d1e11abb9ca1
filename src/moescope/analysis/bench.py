"""Benchmark of the weight-geometry pass on one layer of Mixtral-8x7B's shape.

:func:`bench_weight_geometry` writes one synthetic MoE layer with Mixtral-8x7B's shapes
(Jiang et al. 2024: E = 8 experts, H = 4096, I = 14336; gate w1 and up w3 (I, H), down w2
(H, I), router (E, H), all bf16: 2.8 GB) into a temporary safetensors checkpoint, tensor by
tensor, then times :func:`moescope.analysis.weights.weight_geometry` on it and reads the peak
resident set size of the process (``resource.getrusage``: tracemalloc does not see torch's
allocations, and memory-mapped file pages count as resident). The peak is reset after the
synthesis (``/proc/self/clear_refs``, Linux) so it is the pass's own.

Targets: under 60 s on two CPU cores and under 3 GB peak RSS. The weights are i.i.d.
Gaussian, so the returned geometry must also sit on its null (|z| small) — a free check.

:func:`bench_big` runs ``moescope analyze`` on a whole Mixtral-8x7B-shaped checkpoint of four decoder
layers (12.1 GB of bf16, :mod:`moescope.analysis.big_checkpoint`, made once and cached) under a memory
budget, layer-streamed, and in memory where the machine has the RAM; each run in a fresh process so
that its peak resident set is its own. It sets the numbers against a plain sequential read of the same
shard files: tokens/s, disk read rate, peak growth against the budget.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from moescope.analysis.checkpoint import write_safetensors
from moescope.analysis.weights import DEFAULT_MAX_RANK, DEFAULT_NITER, weight_geometry
from moescope.models.placement import proc_field

__all__ = ["MIXTRAL_8X7B", "TARGET_PEAK_RSS_MB", "TARGET_SECONDS", "bench_big", "bench_routing_capture",
           "bench_trace", "bench_weight_geometry", "big_lines", "big_table"]

MIXTRAL_8X7B = {"num_experts": 8, "hidden": 4096, "intermediate": 14336}
TARGET_SECONDS = 60.0
TARGET_PEAK_RSS_MB = 3072.0


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10   # bytes on macOS, KiB on Linux


def _current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _write_layer(root: Path, *, num_experts: int, hidden: int, intermediate: int, seed: int) -> int:
    """A one-layer Mixtral checkpoint (config.json + model.safetensors) of random bf16 weights."""
    config = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": hidden,
              "intermediate_size": intermediate, "num_local_experts": num_experts, "num_experts_per_tok": 2,
              "num_hidden_layers": 1, "torch_dtype": "bfloat16"}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    moe = "model.layers.0.block_sparse_moe"
    specs = [(f"{moe}.gate.weight", (num_experts, hidden), torch.bfloat16)]
    for e in range(num_experts):
        specs += [(f"{moe}.experts.{e}.w1.weight", (intermediate, hidden), torch.bfloat16),
                  (f"{moe}.experts.{e}.w2.weight", (hidden, intermediate), torch.bfloat16),
                  (f"{moe}.experts.{e}.w3.weight", (intermediate, hidden), torch.bfloat16)]
    shapes = {name: shape for name, shape, _ in specs}
    gen = torch.Generator().manual_seed(seed)

    def make(name: str) -> torch.Tensor:
        # i.i.d. N(0, 1/fan_in) like an initialisation; the scale does not change any angle.
        shape = shapes[name]
        return torch.randn(shape, generator=gen, dtype=torch.bfloat16).mul_(shape[1] ** -0.5)

    return write_safetensors(root / "model.safetensors", specs, make)


def bench_weight_geometry(*, num_experts: int = MIXTRAL_8X7B["num_experts"], hidden: int = MIXTRAL_8X7B["hidden"],
                          intermediate: int = MIXTRAL_8X7B["intermediate"], max_rank: int = DEFAULT_MAX_RANK,
                          niter: int = DEFAULT_NITER, threads: int | None = None, workdir: str | Path | None = None,
                          seed: int = 0, progress: bool = False, verbose: bool = True) -> dict:
    """Time the weight-geometry pass on one synthetic MoE layer (Mixtral-8x7B's shape by default).

    Args:
        num_experts, hidden, intermediate: the layer's E, H, I.
        max_rank, niter: passed to :func:`weight_geometry` (its defaults).
        threads: torch intra-op threads for the run (restored after); None keeps the current.
        workdir: where to write the temporary checkpoint (needs E·3·H·I·2 bytes: 2.8 GB for
            Mixtral); default the system temp directory. Removed afterwards.
        progress: show the pass's progress bar.
        verbose: print a one-screen summary.

    Returns:
        dict with ``shape``, ``file_gb``, ``synth_s``, ``analyze_s`` (wall), ``cpu_s`` (user +
        system CPU seconds of the pass; on a busy machine ``cpu_s / threads`` bounds an idle
        machine's wall time from below), ``load_avg``, ``peak_rss_mb`` (of the pass alone when
        ``peak_reset``), ``rss_before_mb``, ``threads``, ``cpus``, ``rank``,
        the null checks ``subspace_z``, ``router_ks_pvalue``, ``alignment_z`` and ``targets``
        with ``ok`` (both targets met).
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        with tempfile.TemporaryDirectory(prefix="moescope-bench-", dir=workdir) as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            size = _write_layer(root, num_experts=num_experts, hidden=hidden, intermediate=intermediate, seed=seed)
            synth_s = time.perf_counter() - t0
            reset = _reset_peak_rss()
            before = _current_rss_mb()
            t0, c0 = time.perf_counter(), _cpu_seconds()
            result = weight_geometry(root, max_rank=max_rank, niter=niter, seed=seed, progress=progress)
            analyze_s, cpu_s = time.perf_counter() - t0, _cpu_seconds() - c0
            peak = _peak_rss_mb()
    finally:
        torch.set_num_threads(old_threads)
    layer = result["layers"][0]
    out = {
        "shape": {"num_experts": num_experts, "hidden": hidden, "intermediate": intermediate, "dtype": "bfloat16"},
        "file_gb": size / 1e9,
        "synth_s": synth_s,
        "analyze_s": analyze_s,
        "cpu_s": cpu_s,
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "peak_rss_mb": peak,
        "peak_reset": reset,
        "rss_before_mb": before,
        "threads": torch.get_num_threads() if threads is None else int(threads),
        "cpus": os.cpu_count(),
        "rank": layer["experts"]["rank"],
        "niter": niter,
        "subspace_z": layer["experts"]["z"],
        "router_ks_pvalue": layer["router"]["ks_pvalue"],
        "alignment_z": layer["alignment"]["z_own"],
        "targets": {"seconds": TARGET_SECONDS, "peak_rss_mb": TARGET_PEAK_RSS_MB},
    }
    out["ok"] = analyze_s < TARGET_SECONDS and peak < TARGET_PEAK_RSS_MB
    if verbose:
        print(f"weight geometry, one layer E={num_experts} H={hidden} I={intermediate} bf16 "
              f"({out['file_gb']:.2f} GB, written in {synth_s:.1f} s)")
        print(f"  pass: {analyze_s:.1f} s wall, {cpu_s:.1f} s CPU on {out['threads']} threads "
              f"(target < {TARGET_SECONDS:.0f} s wall; load average {out['load_avg'] or 0:.1f} on "
              f"{out['cpus']} CPUs)")
        print(f"  peak RSS {peak:.0f} MB (target < {TARGET_PEAK_RSS_MB:.0f} MB; {before or 0:.0f} MB before the pass"
              f"{'' if reset else ', peak not reset: includes the synthesis'})")
        print(f"  rank {out['rank']}, null checks on i.i.d. weights: subspace z = {out['subspace_z']:+.2f}, "
              f"router KS p = {out['router_ks_pvalue']:.3f}, alignment z = {out['alignment_z']:+.2f}")
        print(f"  {'OK' if out['ok'] else 'TARGET MISSED'}")
    return out


def bench_routing_capture(*, tokens: int = 4096, seq_len: int = 256, repeats: int = 5, seed: int = 0,
                          dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict:
    """Cost of recording routing in each compute dtype, and the statistics' memory against the amount of text.

    Times the forward of a small Mixtral (from its real config class, random weights; E = 8, k = 2, H = 256,
    4 layers) over ``tokens`` tokens with and without a :class:`~moescope.models.RoutingRecorder` feeding
    :class:`RoutingStats` (median of ``repeats``, the two alternating), once per dtype in ``dtypes``: the same
    model cast (``model.to(dtype)``), so that only the arithmetic differs. Measures the bytes of the statistics'
    tensors after 1× and 4× the text — equal by construction (sums only), measured to show it.

    Returns:
        ``{"tokens_per_pass", "threads", "bf16_isa", "dtypes": {dtype: {"forward_s", "forward_recorded_s",
        "overhead", "tokens_per_s", "tokens_per_s_recorded"}}, "speedup": {dtype: float32's forward_s / its}
        (with and without capture: ``plain`` and ``recorded``), "stats_bytes_after_1x", "stats_bytes_after_4x"}``;
        the float32 timings also at the top level (``forward_s``, ``forward_recorded_s``, ``overhead``).
    """
    import statistics as st

    from transformers import MixtralConfig, MixtralForCausalLM

    from moescope.analysis.routing import RoutingStats
    from moescope.models import RoutingRecorder, find_moe_layers
    from moescope.models.loading import check_dtype
    from moescope.moe.benchmark import cpu_bf16_isa

    wanted = {name: check_dtype(name) for name in dtypes}
    if not wanted or any(d is None for d in wanted.values()):
        raise ValueError(f"dtypes must name float32, bfloat16 or float16 (not auto); got {dtypes!r}")
    torch.manual_seed(seed)
    cfg = MixtralConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, vocab_size=2048)
    model = MixtralForCausalLM(cfg).eval()
    views = find_moe_layers(model)
    ids = torch.randint(0, cfg.vocab_size, (tokens // seq_len, seq_len))                  # (B, S)

    def stats_bytes(s: RoutingStats) -> int:
        return sum(t.numel() * t.element_size() for layer in s.layers for t in layer.tensors())

    stats = RoutingStats([v.num_experts for v in views], [v.top_k for v in views], vocab_size=cfg.vocab_size)
    per_dtype = {}
    for name, dtype in wanted.items():
        model.to(dtype)
        plain, recorded = [], []
        with torch.no_grad():
            model(ids[:1])  # warm-up (oneDNN builds its kernels for this dtype)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(ids)
                plain.append(time.perf_counter() - t0)
                with RoutingRecorder(model, views) as rec:
                    t0 = time.perf_counter()
                    model(ids)
                    for r in rec.pop():
                        stats.update(r)
                    recorded.append(time.perf_counter() - t0)
        p, r = st.median(plain), st.median(recorded)
        per_dtype[name] = {"forward_s": p, "forward_recorded_s": r, "overhead": r / p - 1,
                           "tokens_per_s": ids.numel() / p, "tokens_per_s_recorded": ids.numel() / r}
    one = stats_bytes(stats)
    with torch.no_grad(), RoutingRecorder(model, views) as rec:
        for _ in range(3 * len(wanted)):
            model(ids)
            for r in rec.pop():
                stats.update(r)
    base = per_dtype.get("float32")
    speedup = {name: {"plain": base["forward_s"] / d["forward_s"],
                      "recorded": base["forward_recorded_s"] / d["forward_recorded_s"]}
               for name, d in per_dtype.items()} if base else {}
    first = base or next(iter(per_dtype.values()))
    return {"tokens_per_pass": int(ids.numel()), "threads": torch.get_num_threads(), "bf16_isa": cpu_bf16_isa(),
            "forward_s": first["forward_s"], "forward_recorded_s": first["forward_recorded_s"],
            "overhead": first["overhead"], "dtypes": per_dtype, "speedup": speedup,
            "stats_bytes_after_1x": one, "stats_bytes_after_4x": stats_bytes(stats)}


def bench_trace(*, sizes: tuple[int, ...] = (10_000, 100_000), seq_len: int = 256, batch: int = 8,
                seed: int = 0) -> list[dict]:
    """Routing capture with everything analyze records per token switched on, against a plain forward.

    For each number of tokens in ``sizes``: the same small Mixtral as :func:`bench_routing_capture` runs
    the text batch by batch once plainly and once with the recorder feeding :class:`RoutingStats` (with the
    token table), :class:`~moescope.analysis.pathways.Pathways` and a :class:`~moescope.analysis.trace.TraceWriter`
    to a temporary Parquet file (the two runs interleaved batch by batch, so that load on the machine hits both
    alike). Reports the overhead, tokens/s and the growth of the process's resident set over the run: flat in the
    number of tokens when nothing is kept per token but the file.
    """
    from transformers import MixtralConfig, MixtralForCausalLM

    from moescope.analysis.pathways import Pathways
    from moescope.analysis.routing import RoutingStats
    from moescope.analysis.trace import TraceWriter
    from moescope.models import RoutingRecorder, find_moe_layers

    torch.manual_seed(seed)
    cfg = MixtralConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, vocab_size=2048)
    model = MixtralForCausalLM(cfg).eval()
    views = find_moe_layers(model)
    out = []
    for tokens in sizes:
        ids = torch.randint(0, cfg.vocab_size, (max(1, tokens // seq_len), seq_len))
        mask = torch.ones_like(ids)
        stats = RoutingStats([v.num_experts for v in views], [v.top_k for v in views], vocab_size=cfg.vocab_size)
        paths = Pathways([v.num_experts for v in views])
        plain = recorded = 0.0
        base = _current_rss_mb()
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            model(ids[:1])  # warm-up
            with TraceWriter(Path(tmp) / "trace.parquet", [v.index for v in views], str,
                             top_k=[v.top_k for v in views]) as trace:
                for start in range(0, ids.shape[0], batch):
                    b, m = ids[start : start + batch], mask[start : start + batch]
                    t0 = time.perf_counter()
                    model(b)
                    plain += time.perf_counter() - t0
                    t0 = time.perf_counter()     # the hooks' installation counts against the recorded run
                    with RoutingRecorder(model, views) as rec:
                        rec.set_batch(b, m)
                        model(b)
                        records = rec.pop()
                    for r in records:
                        stats.update(r)
                    trace.add(start, "bench", b, m, torch.arange(b.shape[0]) * seq_len, records)
                    paths.add(torch.stack([r.indices[:, 0] for r in records], dim=1).numpy())
                    recorded += time.perf_counter() - t0
            file_bytes = (Path(tmp) / "trace.parquet").stat().st_size      # written and closed
            t0 = time.perf_counter()
            summary = paths.summary()
            pathway_s = time.perf_counter() - t0
        grown = _current_rss_mb()
        out.append({"tokens": int(ids.numel()), "plain_s": plain, "recorded_s": recorded + pathway_s,
                    "pathway_summary_s": pathway_s, "overhead": (recorded + pathway_s) / plain - 1,
                    "tokens_per_s": ids.numel() / (recorded + pathway_s), "trace_bytes": file_bytes,
                    "rss_growth_mb": None if base is None or grown is None else grown - base,
                    "pathway_tokens": summary.get("tokens"), "threads": torch.get_num_threads()})
    return out


def bench_ablation(*, layers: int = 8, experts: int = 8, hidden: int = 256, windows: int = 16, seq_len: int = 128,
                   seed: int = 0) -> dict:
    """The full exact ablation map (zero mode, every layer × expert) with the residual cache against whole
    forwards, in the same process, on a small Mixtral (its real config class, random weights).

    Returns forward-pass equivalents (cached and naive L·E + 1), wall seconds of both, the largest
    difference between their per-window loss changes (the cache must change nothing) and the Spearman
    agreement of first-order attribution with the exact map.
    """
    from transformers import MixtralConfig, MixtralForCausalLM

    from moescope.analysis.ablation import AblationConfig, ablate
    from moescope.analysis.interventions import zero
    from moescope.analysis.window_loss import window_losses
    from moescope.models import find_moe_layers

    torch.manual_seed(seed)
    cfg = MixtralConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                        num_attention_heads=8, num_key_value_heads=4, num_local_experts=experts,
                        num_experts_per_tok=2, vocab_size=2048)
    model = MixtralForCausalLM(cfg).eval()
    views = find_moe_layers(model)
    ids = torch.randint(0, cfg.vocab_size, (windows, seq_len), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    res = ablate(model, views, {"text": ids}, AblationConfig(modes=("zero",), exact="all", batch_size=windows,
                                                             draws=200))
    cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = window_losses(model, ids).numpy()
    worst = 0.0
    for li, view in enumerate(views):
        for e in range(experts):
            with zero(view, e):
                delta = window_losses(model, ids).numpy() - base
            worst = max(worst, float(abs(delta - res.delta["zero"]["text"][li, e]).max()))
    naive_s = time.perf_counter() - t0
    return {"layers": layers, "experts": experts, "hidden": hidden, "tokens": int(ids.numel()),
            "threads": torch.get_num_threads(), "cached_forward_equivalents": res.cost,
            "naive_forward_equivalents": res.naive_cost, "cached_s": cached_s, "naive_s": naive_s,
            "max_abs_difference": worst, "rank_agreement": res.rank_agreement("zero", "text")}


# --------------------------------------------------------------------------- analyze on a 12 GB checkpoint

_READ_CHUNK = 16 * 2**20   # plain-read block: large enough that the syscalls cost nothing beside the disk
_FITS_MARGIN = 1.1         # the in-memory path runs when RAM available >= 1.1 x its plan (room for transients)
_ANON_EVERY_S = 0.02       # anonymous-RSS sampling period: a layer's tensors live for seconds, so none is missed
BIG_CHECKPOINT = "mixtral-8x7b-4layers"


def _cached_fraction(files: list[Path]) -> float | None:
    """Fraction of the files' pages in the page cache: ``mincore(2)`` on a private mapping of each (Linux),
    else None."""
    import ctypes
    import mmap

    import numpy as np

    try:
        mincore = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    cached = pages = 0
    for path in files:
        size = path.stat().st_size
        if size == 0:
            continue
        n = -(-size // mmap.PAGESIZE)
        vec = np.zeros(n, dtype=np.uint8)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            anchor = ctypes.c_char.from_buffer(mm)  # the mapping's address; released before the mapping closes
            rc = mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size),
                         vec.ctypes.data_as(ctypes.c_void_p))
            del anchor
        if rc != 0:
            return None
        cached += int((vec & 1).sum())
        pages += n
    return cached / pages if pages else None


def _drop_page_cache(files: list[Path]) -> dict:
    """``posix_fadvise(DONTNEED)`` on each file: the kernel drops their clean, unmapped cached pages (no root
    needed; pages another process maps stay). Returns what was asked and the cached fraction after."""
    if not hasattr(os, "posix_fadvise"):
        return {"asked": False, "cached_after": _cached_fraction(files)}
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return {"asked": True, "cached_after": _cached_fraction(files)}


def _plain_read(files: list[Path]) -> dict:
    """Read every file start to end in :data:`_READ_CHUNK` blocks into one buffer: the disk's sequential rate."""
    cache = _drop_page_cache(files)
    buf = memoryview(bytearray(_READ_CHUNK))
    total, t0 = 0, time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    seconds = time.perf_counter() - t0
    return {"bytes": total, "wall_s": seconds, "read_rate": total / seconds, "page_cache": cache}


def _analyze_child(spec: str) -> None:
    """The body of one measured run, in a fresh process: ``spec`` is the JSON of :func:`_run_analyze`'s arguments;
    writes the measurements as JSON to ``spec["out"]``."""
    args = json.loads(spec)
    from transformers import AutoTokenizer

    from moescope.analysis.analyze import AnalyzeConfig, Source, analyze
    from moescope.analysis.sample_text import sample_domains
    from moescope.models.streaming import memory_plan

    text = "\n\n".join(sample_domains().values())
    have = len(AutoTokenizer.from_pretrained(args["path"])(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join([text] * math.ceil(args["tokens"] / max(1, have)))
    streamed = args["max_memory"] is not None
    cfg = AnalyzeConfig(path=Path(args["path"]), sources=(Source(label="sample", text=text),),
                        stream_layers=streamed, max_memory=args["max_memory"], dtype="auto", weights=False,
                        boundary_points=0, seq_len=args["seq_len"], batch_size=args["batch_size"],
                        max_tokens=args["tokens"], flip_check=0)  # the analysis alone: no float32 second load
    memory_plan(cfg.path, dtype=torch.bfloat16)  # imports the model's code now, so the baseline below holds it
    _reset_peak_rss()
    status, io = "/proc/self/status", "/proc/self/io"
    rss0, anon0, io0 = proc_field(status, "VmRSS"), proc_field(status, "RssAnon"), proc_field(io, "read_bytes")
    anon, stop = [anon0 or 0], threading.Event()

    def sample() -> None:  # the kernel keeps no high-water mark of anonymous memory alone: sample it
        while not stop.wait(_ANON_EVERY_S):
            anon[0] = max(anon[0], proc_field(status, "RssAnon") or 0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    c0, t0 = _cpu_seconds(), time.perf_counter()
    results = analyze(cfg)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    peak, io1 = proc_field(status, "VmHWM"), proc_field(io, "read_bytes")
    stop.set()
    sampler.join()
    out = {"wall_s": wall, "cpu_s": cpu, "tokens": results["text"]["tokens"], "memory": results.get("memory"),
           "peak_rss_growth": None if rss0 is None or peak is None else peak - rss0,
           "peak_anon_growth": None if anon0 is None else anon[0] - anon0,
           "storage_read": None if io0 is None or io1 is None else io1 - io0, "threads": torch.get_num_threads()}
    Path(args["out"]).write_text(json.dumps(out))


def _run_analyze(path: Path, *, max_memory: str | int | None, tokens: int, seq_len: int, batch_size: int,
                 files: list[Path], weight_bytes: int, timeout_s: float | None) -> dict:
    """``analyze`` on ``path`` in a fresh Python process, after dropping the shards' page cache."""
    cache = _drop_page_cache(files)
    with tempfile.TemporaryDirectory(prefix="moescope-bench-big-") as tmp:
        out = Path(tmp) / "run.json"
        spec = json.dumps({"path": str(path), "max_memory": max_memory, "tokens": tokens, "seq_len": seq_len,
                           "batch_size": batch_size, "out": str(out)})
        code = "import sys; from moescope.analysis.bench import _analyze_child; _analyze_child(sys.argv[1])"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=timeout_s)
        process_s = time.perf_counter() - t0
        if proc.returncode != 0 or not out.is_file():
            return {"error": f"exit code {proc.returncode}: {proc.stderr.strip()[-1500:]}", "page_cache": cache}
        run = json.loads(out.read_text())
    memory = run["memory"] or {}
    # in memory, from_pretrained reads every weight once; streamed, the streamer counts what it read
    read = memory.get("bytes_read") if memory.get("streamed") else weight_bytes
    run.update(process_s=process_s, page_cache=cache, bytes_read=read, tokens_per_s=run["tokens"] / run["wall_s"],
               read_rate=None if read is None else read / run["wall_s"],
               passes=None if read is None else read / weight_bytes)
    return run


def bench_big(root: str | Path | None = None, *, max_memory: str | int = "4GB", tokens: int = 2048,
              seq_len: int = 256, batch_size: int = 4, cache_dir: str | Path | None = None,
              in_memory: bool = True, shape: dict | None = None, timeout_s: float | None = None,
              on_step: Callable[[str], None] | None = None) -> dict:
    """``moescope analyze`` on a Mixtral-8x7B-shaped checkpoint under ``max_memory``, against a plain read.

    1. the checkpoint (:func:`~moescope.analysis.big_checkpoint.make_mixtral_checkpoint`, four decoder
       layers, 12.1 GB bf16): made once into ``root`` (default ``<cache_dir>/mixtral-8x7b-4layers``,
       ``cache_dir`` defaulting to :func:`~moescope.analysis.big_checkpoint.bench_cache_dir`), reused after;
    2. a plain sequential read of its shard files in 16 MiB blocks, the page cache of those files dropped
       first (``posix_fadvise(DONTNEED)``; whether it went is measured with ``mincore``);
    3. ``analyze`` (routing only: ``weights=False, boundary_points=0``, the checkpoint's dtype) of ``tokens``
       tokens in ``seq_len`` × ``batch_size`` forwards under the budget, layer-streamed, in a fresh process,
       the cache dropped again. A budget below the plan's streamed minimum
       (:func:`~moescope.models.streaming.memory_plan`) is raised to that minimum, and the result says so;
    4. the same in memory (no budget) when ``in_memory`` and the plan's in-memory need, with a 10% margin,
       fits ``MemAvailable``; else the reason it was skipped.

    Args:
        shape: keyword arguments for ``make_mixtral_checkpoint`` (a small model for tests); None: Mixtral-8x7B's.
        timeout_s: the most seconds one analysis process may run.
        on_step: called with a short description as each step starts (progress display).

    Returns:
        JSON-ready dict: ``checkpoint`` (path, files, bytes, made, make_s), ``machine``, ``plan``, ``plain_read``,
        ``streamed`` and ``in_memory`` (per run: wall_s, tokens, tokens_per_s, bytes_read, read_rate, passes,
        storage_read, peak_rss_growth, page_cache; or ``skipped`` / ``error``) and ``ratios``.
    """
    from moescope.analysis.big_checkpoint import MARKER, bench_cache_dir, make_mixtral_checkpoint
    from moescope.models.shards import read_header
    from moescope.models.sizes import format_size, parse_size
    from moescope.models.streaming import memory_plan

    if tokens < 1:
        raise ValueError(f"tokens must be >= 1; got tokens={tokens}")
    budget = parse_size(max_memory)
    step = on_step or (lambda _: None)
    root = Path(root) if root is not None else Path(cache_dir or bench_cache_dir()) / BIG_CHECKPOINT
    def stamp() -> int | None:
        return (root / MARKER).stat().st_mtime_ns if (root / MARKER).is_file() else None

    before = stamp()
    step("checking the cached checkpoint" if before else "making the checkpoint (once; about a minute per 12 GB)")
    t0 = time.perf_counter()
    root = make_mixtral_checkpoint(root, **(shape or {}))
    make_s = time.perf_counter() - t0
    made = stamp() != before
    files = sorted(root.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    weight_bytes = sum(f.stat().st_size - read_header(f)[1] for f in files)  # the files less their headers
    plan = memory_plan(root, dtype=torch.bfloat16, tokens=seq_len * batch_size)
    available = proc_field("/proc/meminfo", "MemAvailable")
    out = {"checkpoint": {"path": str(root), "files": len(files), "bytes": size, "weight_bytes": weight_bytes,
                          "made": made, "make_s": make_s},
           "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "mem_available": available,
                       "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
           "plan": {"describe": plan.describe(), "streamed_minimum": plan.streamed, "in_memory": plan.in_memory,
                    "tokens_per_forward": seq_len * batch_size},
           "tokens": tokens, "budget_requested": budget}
    step(f"plain read of {len(files)} shard files ({size / 1e9:.1f} GB)")
    out["plain_read"] = _plain_read(files)
    run = {"tokens": tokens, "seq_len": seq_len, "batch_size": batch_size, "files": files,
           "weight_bytes": weight_bytes, "timeout_s": timeout_s}
    used = max(budget, -(-plan.streamed // 2**20) * 2**20)  # raised to the minimum, in whole MiB, if below it
    step(f"analyze, streamed in a {format_size(used)} budget ({tokens} tokens, fresh process)")
    streamed = _run_analyze(root, max_memory=used, **run)
    streamed.update(budget=used, budget_raised=used != budget)
    out["streamed"] = streamed
    need = plan.in_memory * _FITS_MARGIN
    if not in_memory:
        out["in_memory"] = {"skipped": "not asked for"}
    elif available is None or need > available:
        out["in_memory"] = {"skipped": f"does not fit (needs {format_size(need)} with a 10% margin, available "
                                       f"{'unknown' if available is None else format_size(available)})"}
    else:
        step(f"analyze in memory ({format_size(plan.in_memory)}; {tokens} tokens, fresh process)")
        out["in_memory"] = _run_analyze(root, max_memory=None, **run)
    out["ratios"] = _big_ratios(out)
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _big_ratios(out: dict) -> dict:
    s, m, plain = out["streamed"], out["in_memory"], out["plain_read"]
    return {"streamed_vs_in_memory_tokens_per_s": _div(s.get("tokens_per_s"), m.get("tokens_per_s")),
            "streamed_read_vs_plain_read": _div(s.get("read_rate"), plain["read_rate"]),
            "in_memory_read_vs_plain_read": _div(m.get("read_rate"), plain["read_rate"]),
            "streamed_peak_vs_budget": _div(s.get("peak_rss_growth"), s.get("budget")),
            "streamed_peak_vs_minimum": _div(s.get("peak_rss_growth"), out["plan"]["streamed_minimum"]),
            "in_memory_peak_vs_plan": _div(m.get("peak_rss_growth"), out["plan"]["in_memory"]),
            "in_memory_anon_peak_vs_plan": _div(m.get("peak_anon_growth"), out["plan"]["in_memory"]),
            "streamed_peak_vs_in_memory_peak": _div(s.get("peak_rss_growth"), m.get("peak_rss_growth"))}


def _cache_note(cache: dict | None) -> str:
    if not cache:
        return "—"
    frac = cache.get("cached_after")
    if not cache["asked"]:
        return "not dropped (no posix_fadvise)"
    return "drop asked" if frac is None else f"dropped ({frac:.0%} left)" if frac < 0.01 else f"{frac:.0%} left"


def big_table(out: dict):
    """A rich table of :func:`bench_big`'s result: the plain read, the streamed and the in-memory run, and
    their ratios."""
    from rich.table import Table

    from moescope.models.sizes import format_size

    s, m, plain, ratios = out["streamed"], out["in_memory"], out["plain_read"], out["ratios"]

    def num(v: float | None, fmt: str = "{:.2f}") -> str:
        return "—" if v is None else fmt.format(v)

    def size(v: float | None) -> str:
        return "—" if v is None else format_size(v)

    def rate(v: float | None) -> str:
        return "—" if v is None else f"{v / 1e6:,.0f} MB/s"

    ck = out["checkpoint"]
    table = Table(title=f"analyze on a Mixtral-8x7B-shaped checkpoint: {ck['bytes'] / 1e9:.1f} GB bf16 in "
                        f"{ck['files']} shards, {out['tokens']} tokens, {out['machine']['threads']} threads")
    budget = f"streamed ({size(s.get('budget'))} budget)"
    for col in ("", "plain read", budget, "in memory", "streamed ÷ in memory"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("wall time", num(plain["wall_s"], "{:.1f} s"), num(s.get("wall_s"), "{:.1f} s"),
                  num(m.get("wall_s"), "{:.1f} s"), num(_div(s.get("wall_s"), m.get("wall_s"))))
    table.add_row("tokens / s", "—", num(s.get("tokens_per_s"), "{:.1f}"), num(m.get("tokens_per_s"), "{:.1f}"),
                  num(ratios["streamed_vs_in_memory_tokens_per_s"]))
    table.add_row("weight bytes read", size(plain["bytes"]), size(s.get("bytes_read")), size(m.get("bytes_read")),
                  num(_div(s.get("bytes_read"), m.get("bytes_read"))))
    table.add_row("passes over the weights", "1.00", num(s.get("passes")), num(m.get("passes")), "")
    table.add_row("read by the disk (page-cache misses)", "—", size(s.get("storage_read")),
                  size(m.get("storage_read")), "")
    table.add_row("read rate (bytes read / wall)", rate(plain["read_rate"]), rate(s.get("read_rate")),
                  rate(m.get("read_rate")), "")
    table.add_row("read rate ÷ plain read", "1.00", num(ratios["streamed_read_vs_plain_read"]),
                  num(ratios["in_memory_read_vs_plain_read"]), "")
    table.add_row("peak RSS growth", "—", size(s.get("peak_rss_growth")), size(m.get("peak_rss_growth")),
                  num(ratios["streamed_peak_vs_in_memory_peak"]))
    table.add_row("peak anonymous RSS growth (sampled)", "—", size(s.get("peak_anon_growth")),
                  size(m.get("peak_anon_growth")), num(_div(s.get("peak_anon_growth"), m.get("peak_anon_growth"))))
    table.add_row("peak ÷ budget", "—", num(ratios["streamed_peak_vs_budget"]), "—", "")
    anon = num(ratios["in_memory_anon_peak_vs_plan"])
    table.add_row("peak ÷ plan (streamed minimum / in-memory need)", "—", num(ratios["streamed_peak_vs_minimum"]),
                  f"{num(ratios['in_memory_peak_vs_plan'])} (anonymous {anon})", "")
    table.add_row("page cache of the shards before", _cache_note(plain["page_cache"]), _cache_note(s.get("page_cache")),
                  _cache_note(m.get("page_cache")), "")
    return table


def big_lines(out: dict) -> list[str]:
    """The notes under :func:`big_table`: the checkpoint, the plan, a raised budget, a skipped or failed run."""
    from moescope.models.sizes import format_size

    ck, plan, machine = out["checkpoint"], out["plan"], out["machine"]
    lines = [f"checkpoint {ck['path']}: " + (f"made in {ck['make_s']:.0f} s" if ck["made"] else "cached"),
             f"plan ({plan['tokens_per_forward']} tokens per forward): {plan['describe']}; streamed minimum "
             f"{format_size(plan['streamed_minimum'])}, in memory {format_size(plan['in_memory'])}",
             f"machine: {machine['cpus']} CPUs, load average {machine['load_avg'] or 0:.1f}, "
             f"{format_size(machine['mem_available'] or 0)} available"]
    lines.append("RSS counts any checkpoint pages a process maps (moescope reads with pread and maps none; "
                 "from_pretrained would), anonymous RSS only what it allocated")
    s = out["streamed"]
    if s.get("budget_raised"):
        lines.append(f"the budget asked for, {format_size(out['budget_requested'])}, is below the streamed minimum "
                     f"of this plan: streamed in {format_size(s['budget'])} instead")
    for name in ("streamed", "in_memory"):
        run = out[name]
        if "skipped" in run:
            lines.append(f"{name.replace('_', ' ')}: skipped, {run['skipped']}")
        if "error" in run:
            lines.append(f"{name.replace('_', ' ')}: failed, {run['error']}")
    return lines
