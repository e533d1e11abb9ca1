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
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from moescope.analysis.checkpoint import write_safetensors
from moescope.analysis.weights import DEFAULT_MAX_RANK, DEFAULT_NITER, weight_geometry

__all__ = ["MIXTRAL_8X7B", "TARGET_PEAK_RSS_MB", "TARGET_SECONDS", "bench_weight_geometry"]

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


def bench_routing_capture(*, tokens: int = 4096, seq_len: int = 256, repeats: int = 5, seed: int = 0) -> dict:
    """Cost of recording routing, and the statistics' memory against the amount of text.

    Times the forward of a small Mixtral (from its real config class, random weights) with and
    without a :class:`~moescope.models.RoutingRecorder` feeding :class:`RoutingStats`
    (median of ``repeats``, alternating), and measures the bytes of the statistics' tensors
    after 1× and 4× the text — equal by construction (sums only), measured to show it.
    """
    import statistics as st

    from transformers import MixtralConfig, MixtralForCausalLM

    from moescope.analysis.routing import RoutingStats
    from moescope.models import RoutingRecorder, find_moe_layers

    torch.manual_seed(seed)
    cfg = MixtralConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, vocab_size=2048)
    model = MixtralForCausalLM(cfg).eval()
    views = find_moe_layers(model)
    ids = torch.randint(0, cfg.vocab_size, (tokens // seq_len, seq_len))

    def stats_bytes(s: RoutingStats) -> int:
        return sum(t.numel() * t.element_size() for layer in s.layers for t in layer.tensors())

    stats = RoutingStats([v.num_experts for v in views], [v.top_k for v in views], vocab_size=cfg.vocab_size)
    plain, recorded = [], []
    with torch.no_grad():
        model(ids[:1])  # warm-up
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
    one = stats_bytes(stats)
    with torch.no_grad(), RoutingRecorder(model, views) as rec:
        for _ in range(3):
            model(ids)
            for r in rec.pop():
                stats.update(r)
    return {"tokens_per_pass": int(ids.numel()), "threads": torch.get_num_threads(),
            "forward_s": st.median(plain), "forward_recorded_s": st.median(recorded),
            "overhead": st.median(recorded) / st.median(plain) - 1,
            "stats_bytes_after_1x": one, "stats_bytes_after_4x": stats_bytes(stats)}


def bench_ablation(*, layers: int = 8, experts: int = 8, hidden: int = 256, windows: int = 16, seq_len: int = 128,
                   seed: int = 0) -> dict:
    """The full exact ablation map (zero mode, every layer × expert) with the residual cache against whole
    forwards, in the same process, on a small Mixtral (its real config class, random weights).

    Returns forward-pass equivalents (cached and naive L·E + 1), wall seconds of both, the largest
    difference between their per-window loss changes (the cache must change nothing) and the Spearman
    agreement of first-order attribution with the exact map.
    """
    from transformers import MixtralConfig, MixtralForCausalLM

    from moescope.analysis.ablation import AblationConfig, ablate, window_losses, zero
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
