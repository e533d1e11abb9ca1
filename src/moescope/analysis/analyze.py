"""``moescope analyze``: routing health and weight geometry of an MoE checkpoint on disk.

Loads the checkpoint (``moescope.models.load_moe_model``), streams the given texts through
it in fixed-length sequences while a :class:`~moescope.models.RoutingRecorder` captures what
every MoE layer did, accumulates :class:`~moescope.analysis.routing.RoutingStats` (memory
independent of the amount of text), records token × expert weights for a short sample of
each text (the heatmaps), and measures the weight geometry straight from the safetensors
files (:func:`moescope.analysis.weights.weight_geometry`). Returns one JSON-ready dict.

With ``stream_layers`` (or a ``max_memory`` budget the whole model does not fit) the model is
:func:`moescope.models.streaming.stream_moe_model`'s: one decoder layer resident at a time, same
routing records; the results then carry a ``memory`` section (the plan, the budget, the peak
resident-memory growth over the baseline before loading, the bytes read).

**Dtype.** The model computes in the checkpoint's own dtype by default (``dtype="auto"``: bfloat16 for most
released MoE checkpoints, whose GEMMs run several times faster than float32 on CPUs with AMX and on GPUs);
``results["model"]`` states the dtype used and where it came from. When that dtype is not float32, a *flip
check* (``flip_check`` windows, :func:`_float32_flips`) re-runs the first windows of each text through the
model in float32 and counts, per MoE layer, the tokens whose expert set differs and whether each was a near-tie
(:func:`moescope.analysis.dtype_flips.dtype_flips`): ``results["dtype_flips"]``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from moescope.analysis.checkpoint import open_checkpoint
from moescope.analysis.pathways import Pathways
from moescope.analysis.routing import RoutingStats
from moescope.analysis.sample_text import sample_domains
from moescope.models import RoutingRecorder
from moescope.models.layer_major import LayerMajor, carrying_state
from moescope.models.placement import Placed, finish_memory, rss
from moescope.models.view import RoutingRecord


@dataclass(frozen=True)
class Source:
    """One text to route: a label, an optional domain, the text itself."""

    label: str
    text: str
    domain: str | None = None


@dataclass(frozen=True)
class AnalyzeConfig(Placed):
    """What ``moescope analyze`` measures."""

    path: Path
    sources: tuple[Source, ...] = ()      # empty: the built-in code / language / math sample
    layers: tuple[int, ...] | None = None  # MoE layer indices to analyse (None = all)
    seq_len: int = 256                     # tokens per sequence fed to the model
    batch_size: int = 4                    # sequences per forward pass
    max_tokens: int = 50_000               # per source: enough for stable loads, bounded time
    heatmap_tokens: int = 48               # tokens per sample in the token x expert heatmaps
    text_tokens: int = 256                 # tokens per sample shown as text coloured by expert (0: off)
    weights: bool = True                   # also measure weight geometry from the safetensors files
    rank: int | None = None                # expert subspace rank (None: by energy threshold)
    boundary_points: int = 64              # tokens per layer whose distance to a routing change is measured (0: off)
    routing: bool = True                   # route text (False: weight geometry from the files only, no model built)
    trace: Path | None = None              # write every routed token's choices to this .parquet (analysis.trace)
    activity_tokens: int = 2048            # real tokens per layer whose expert outputs are measured (0: off)
    activity_draws: int = 99               # permutation draws of the expert-output geometry's null (0: none)
    ablation_windows: int = 16             # windows per domain for the re-route ablation map (0: off)
    # the checkpoint's own dtype (bfloat16 for most real MoE checkpoints: AMX / tensor-core GEMMs, half the
    # memory); "float32" for statistics free of bfloat16 rounding. The flip check below measures the difference.
    dtype: str = field(default="auto", kw_only=True)
    flip_check: int = 8                    # windows re-run in float32 to count routing flips when dtype is not
    #                                        float32: 8 × seq_len tokens per layer, one float32 load (0: off)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "max_tokens", "heatmap_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)}")
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens must be >= 0 (0: no coloured text); got text_tokens={self.text_tokens}")
        if self.boundary_points < 0:
            raise ValueError(f"boundary_points must be >= 0; got {self.boundary_points}")
        if self.ablation_windows < 0:
            raise ValueError(f"ablation_windows must be >= 0 (0: no ablation); got {self.ablation_windows}")
        check_flip_check(self.flip_check)
        if self.activity_tokens < 0 or (self.activity_draws and self.activity_draws < 39):
            raise ValueError(f"activity_tokens must be >= 0 and activity_draws 0 or >= 39; got "
                             f"{self.activity_tokens}, {self.activity_draws}")
        super().__post_init__()  # dtype, device, streaming and device map, before any work
        if self.trace is not None:
            if not self.routing:
                raise ValueError("--trace records routed tokens; it cannot be combined with --no-routing")
            trace = Path(self.trace)
            if trace.suffix != ".parquet" or not trace.parent.is_dir():
                raise ValueError(f"--trace {str(self.trace)!r}: give a .parquet file in an existing folder")
        if not self.routing and not self.weights:
            raise ValueError("nothing to measure: routing=False (--no-routing) needs weights=True (--weights)")
        for s in self.sources:
            if not s.text.strip():
                raise ValueError(f"text source {s.label!r} is empty")


def check_flip_check(windows: int) -> int:
    """``flip_check``: a whole number of windows >= 0, else a ``ValueError`` naming the value."""
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 0:
        raise ValueError(f"flip_check (--flip-check) must be a whole number of windows >= 0 (0: no float32 flip "
                         f"check); got {windows!r}")
    return windows


def default_sources(max_chars: int = 20_000) -> tuple[Source, ...]:
    """The built-in labelled sample (code, language, math) as sources."""
    return tuple(Source(label=name, text=text, domain=name) for name, text in sample_domains(max_chars).items())


def _sequences(ids: list[int], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids -> (N, S) token ids and attention mask; the last sequence is right-padded."""
    n = max(1, math.ceil(len(ids) / seq_len))
    out = torch.full((n * seq_len,), pad_id, dtype=torch.long)
    out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask = torch.zeros(n * seq_len, dtype=torch.long)
    mask[: len(ids)] = 1
    return out.view(n, seq_len), mask.view(n, seq_len)


def _forward(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
    ids, mask = ids.to(model.device), mask.to(model.device)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if getattr(model.config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids  # teacher-force the same text through the decoder
    with torch.no_grad():
        model(**kwargs)


def _dense_weights(rec: RoutingRecord, tokens: int) -> list[list[float]]:
    """(T, E) combine weights of the experts actually used (0 elsewhere), the first ``tokens`` tokens."""
    indices, weights = rec.indices[:tokens], rec.weights[:tokens]
    dense = torch.zeros(indices.shape[0], rec.scores.shape[-1])
    valid = indices >= 0
    dense.scatter_(1, indices.clamp_min(0), torch.where(valid, weights.float(), 0.0))
    return dense.tolist()


def _sample(name: str, tokens: list[str], records: dict[int, RoutingRecord], heatmap: int, text: int) -> dict:
    """A source's head as the report shows it: ``weights`` {layer: (heatmap, E)} dense combine weights for the
    token × expert heatmaps, ``text`` {layer: {"experts", "weights"}} (text, k) for the text coloured by
    expert (experts -1 where a slot processed nothing), ``tokens`` decoded."""
    return {"name": name, "tokens": tokens[: max(heatmap, text)], "heatmap_tokens": min(heatmap, len(tokens)),
            "weights": {layer: _dense_weights(rec, heatmap) for layer, rec in records.items()},
            "text": {layer: {"experts": rec.indices[:text].tolist(),
                             "weights": [[round(w, 4) for w in row] for row in rec.weights[:text].float().tolist()]}
                     for layer, rec in records.items()} if text else {},
            "num_experts": next(iter(records.values())).scores.shape[-1] if records else 0}


def _distributed() -> tuple[int, int]:
    """(rank, world size): torch.distributed's if running under torchrun, else (0, 1).

    Under ``torchrun`` (WORLD_SIZE > 1) the default process group is created here if the
    caller has not: gloo on CPU, NCCL when CUDA is available.
    """
    import os

    import torch.distributed as dist

    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _selection_biases(path: Path, views: list) -> list:
    """Each view's selection bias (DeepSeek-V3's ``e_score_correction_bias``) or None: the live tensor, or for a
    streamed model (whose layers are not resident) the tensor read from the checkpoint's files."""
    if all(v.selection_bias is None or v.selection_bias.device.type != "meta" for v in views):
        return [v.selection_bias for v in views]
    layers = open_checkpoint(path).layers
    disk, by_index = {layer.name: layer for layer in layers}, {layer.index: layer for layer in layers}
    out = []
    for v in views:
        if v.selection_bias is None or v.selection_bias.device.type != "meta":
            out.append(v.selection_bias)
            continue
        owner = max((name for name in disk if v.name.startswith(name + ".")), key=len, default=None)
        # where the files name the layers otherwise than the live model (Inkling-2: model.llm.layers.N on disk,
        # model.layers.N live), the MoE layer's position among the MoE layers, which both count alike
        layer = disk[owner] if owner is not None else by_index.get(v.index)
        if layer is None:
            raise ValueError(f"{v.name}: its selection bias is not resident and no layer of the checkpoint's files "
                             "holds it; cannot count router near-ties")
        out.append(layer.selection_bias())
    return out


def analyze(cfg: AnalyzeConfig, *, on_tokens: Callable[[int], None] | None = None,
            on_stage: Callable[[str], None] | None = None) -> dict:
    """Run the analysis; ``on_tokens(n)`` is called as batches finish (progress bars), ``on_stage(label)`` when a
    second pass over text starts (the float32 flip check).

    Under torchrun with W processes, rank r routes batches r, r + W, ...; the statistics
    are all-reduced (sums, so the result equals one process's exactly for counts and to
    float rounding for probability sums), weight geometry is split by layer, and every
    rank returns the same dict.
    """
    rank, world = _distributed()
    if cfg.trace is not None and world > 1:
        raise ValueError("--trace writes one file from one process; run it without torchrun")
    if not cfg.routing:
        return _weights_only(cfg, rank, world, progress=on_tokens is not None)
    model, tokenizer, views, memory = cfg.placement.load(cfg.path, tokens=cfg.seq_len * cfg.batch_size)
    if tokenizer is None:
        raise ValueError(f"{cfg.path} has no tokenizer files; analyze needs one to turn the text into token ids")
    chosen = [v for v in views if cfg.layers is None or v.index in cfg.layers]
    if cfg.layers is not None:
        missing = sorted(set(cfg.layers) - {v.index for v in views})
        if missing:
            raise ValueError(f"--layers {missing} not found; the model has MoE layers 0..{len(views) - 1}")
    sources = cfg.sources or default_sources()
    domains = tuple(dict.fromkeys(s.domain for s in sources if s.domain))
    position = {v.index: i for i, v in enumerate(chosen)}
    biases = _selection_biases(cfg.path, chosen)
    stats = RoutingStats([v.num_experts for v in chosen], [v.top_k for v in chosen], domains=domains,
                         vocab_size=len(tokenizer), selection_bias=biases)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_counts, jobs, texts = {}, [], {}
    for number, src in enumerate(sources):
        ids = tokenizer(src.text, add_special_tokens=False)["input_ids"][: cfg.max_tokens]
        if not ids:
            raise ValueError(f"text source {src.label!r} tokenizes to nothing")
        token_counts[src.label] = len(ids)
        texts.setdefault(src.domain or src.label, []).extend(ids)
        seqs, masks = _sequences(ids, cfg.seq_len, pad)
        jobs += [_Job(number, seqs[start : start + cfg.batch_size], masks[start : start + cfg.batch_size],
                      start=torch.arange(start, min(start + cfg.batch_size, seqs.shape[0])) * cfg.seq_len)
                 for start in range(0, seqs.shape[0], cfg.batch_size)][rank::world]
        head = torch.tensor([ids[: max(cfg.heatmap_tokens, min(cfg.text_tokens, cfg.seq_len))]])
        jobs.append(_Job(number, head, torch.ones_like(head), sample=True))
    flip_check = bool(cfg.flip_check and chosen) and model.dtype != torch.float32
    flip_rows = _flip_sample(jobs, cfg.flip_check) if flip_check and world == 1 else {}
    kept: dict[int, dict[int, torch.Tensor]] = {}  # job -> layer position -> (n, E) scores of the compared tokens
    with contextlib.ExitStack() as stack:
        trace = None
        if cfg.trace is not None:
            from moescope.analysis.trace import TraceWriter

            trace = stack.enter_context(TraceWriter(cfg.trace, [v.index for v in chosen],
                                                    lambda t: tokenizer.decode([t]),
                                                    top_k=[v.top_k for v in chosen], selection_bias=biases))

        paths = Pathways([v.num_experts for v in chosen]) if len(chosen) > 1 and world == 1 else None
        firsts: dict[int, dict[int, torch.Tensor]] = {}  # job -> layer position -> first choices of real tokens

        def count(job: _Job, records: list[RoutingRecord]) -> None:
            for rec in records:
                stats.update(_relabel(rec, position), sources[job.source].domain)
            if id(job) in flip_rows:
                kept.setdefault(id(job), {}).update({position[rec.layer]: _compared(rec, flip_rows[id(job)])
                                                     for rec in records})
            if trace is not None:
                trace.add(id(job), sources[job.source].label, job.ids, job.mask, job.start, records)
            if paths is not None:  # a job's layers arrive together, or one by one when layer-major
                got = firsts.setdefault(id(job), {})
                got.update({position[rec.layer]: rec.indices[rec.mask.bool(), 0] for rec in records})
                if len(got) == len(chosen):
                    paths.add(torch.stack([got[i] for i in range(len(chosen))], dim=1).numpy())
                    del firsts[id(job)]

        sampled = _route(model, views, chosen, jobs, memory, count=count, on_tokens=on_tokens)
    pathways = paths.summary() if paths is not None else None
    samples = [_sample(sources[job.source].label, [tokenizer.decode([t]) for t in job.ids[0].tolist()],
                       sampled.get(job.source, {}), cfg.heatmap_tokens, cfg.text_tokens)
               for job in jobs if job.sample]
    if world > 1:
        stats.all_reduce()
    routing = []
    for i, v in enumerate(chosen):
        summary = stats.summary(i)
        summary.update({"layer": v.index, "name": v.name})
        for listed in summary.get("tokens_specialisation", {}).get("vocabulary", {}).get("experts", ()):
            for row in listed:
                row["token"] = tokenizer.decode([row["id"]])
        routing.append(summary)
    first = chosen[0] if chosen else None
    results = {
        "model": {"path": str(cfg.path), "model_type": model.config.model_type, "family": first and first.family,
                  "num_moe_layers": len(views), "num_experts": first and first.num_experts,
                  "top_k": first and first.top_k, "hidden": first and first.hidden,
                  "dtype": str(model.dtype).removeprefix("torch."), "dtype_requested": cfg.dtype,
                  "dtype_source": _dtype_source(cfg.path, cfg.dtype), "device": str(model.device)},
        "text": {"sources": list(token_counts), "tokens": sum(token_counts.values()), "per_source": token_counts,
                 "domains": list(domains), "seq_len": cfg.seq_len},
        "routing": routing,
        "samples": samples,
    }
    if pathways is not None:
        results["pathways"] = pathways
    resident = memory is None or (not memory["streamed"] and cfg.device_map is None)
    if cfg.weights and resident:  # a streamed or offloaded model's layers are not resident
        from moescope.analysis.logit_lens import decode_lens, expert_lens

        results["logit_lens"] = decode_lens(expert_lens(model, chosen), lambda t: tokenizer.decode([t]))
    if cfg.activity_tokens and chosen and resident:
        from moescope.analysis.expert_activity import decode_activity, expert_activity

        batches = ((job.ids, job.mask) for job in jobs if not job.sample)
        results["expert_activity"] = decode_activity(
            expert_activity(model, chosen, batches, max_tokens=cfg.activity_tokens, rank=cfg.rank,
                            draws=cfg.activity_draws), lambda t: tokenizer.decode([t]))
    if cfg.boundary_points and chosen and resident \
            and not getattr(model.config, "is_encoder_decoder", False):
        from moescope.analysis.router_boundary import router_boundary

        first_ids = tokenizer(sources[0].text, add_special_tokens=False)["input_ids"][: cfg.seq_len]
        results["router_boundary"] = router_boundary(model, chosen, torch.tensor([first_ids]),
                                                     points=cfg.boundary_points)
        if hasattr(model, "get_input_embeddings"):
            from moescope.analysis.router_flips import router_flips

            try:
                results["router_flips"] = router_flips(model, chosen, torch.tensor([first_ids]))
            except (RuntimeError, ValueError, TypeError, AttributeError) as err:
                # some families cannot run from input embeddings (Gemma 4 inverts them; DeepSeek-V4 routes by id)
                results["router_flips_skipped"] = f"{type(err).__name__}: {err}"[:300]
    if cfg.ablation_windows and chosen and resident and not getattr(model.config, "is_encoder_decoder", False):
        results["ablation"] = _ablation(cfg, model, views, texts)
    if memory is not None:
        results["memory"] = finish_memory(model, memory)
    indices, dtype = [v.index for v in chosen], model.dtype
    if flip_check and world > 1:
        results["dtype_flips"] = {"dtype": str(dtype).removeprefix("torch."), "reference": "float32",
                                  "skipped": "under torchrun the windows are split over processes; run the flip "
                                             "check in one process"}
    elif flip_rows:
        from moescope.analysis.dtype_flips import float32_bytes

        need = float32_bytes(cfg.path, model, tokens=cfg.seq_len * cfg.batch_size)
        del model, views, chosen, first  # freed before the float32 model is loaded: one model resident at a time
        gc.collect()
        if on_stage is not None:
            on_stage("float32 flip check")
        flip_jobs = [job for job in jobs if id(job) in flip_rows]
        results["dtype_flips"] = _float32_flips(cfg, flip_jobs, flip_rows, kept, dtype=dtype, need=need,
                                                on_tokens=on_tokens)
    else:
        del model
    if cfg.weights:
        results["weights"] = _geometry(cfg, indices, rank, world, progress=on_tokens is not None)
    return results


def _dtype_source(path: Path, requested: str) -> str:
    """Where the compute dtype came from, in words: the ``--dtype`` asked for, or what ``auto`` read."""
    if requested != "auto":
        return f"asked for (--dtype {requested})"
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    key = next((k for k in ("dtype", "torch_dtype") if config.get(k)), None)
    where = f"config.json's {key}" if key else "the dtype most of its safetensors bytes are stored in"
    return f"the checkpoint's own (--dtype auto: {where})"


def _flip_sample(jobs: list[_Job], windows: int) -> dict[int, int]:
    """The flip check's windows: ``{id(job): its leading sequences compared}``, dealt to the sources in turn (each
    text's first window, then each one's second, ...) until ``windows``; heatmap samples excluded. Whole jobs
    are re-run, so that both runs see every window in the same batch (a GEMM's rounding can depend on it)."""
    by_source: dict[int, list[_Job]] = {}
    for job in jobs:
        if not job.sample:
            by_source.setdefault(job.source, []).append(job)
    have = {s: sum(job.ids.shape[0] for job in js) for s, js in by_source.items()}
    take, left = dict.fromkeys(by_source, 0), windows
    while left and any(take[s] < have[s] for s in take):
        for s in take:
            if left and take[s] < have[s]:
                take[s], left = take[s] + 1, left - 1
    picked: dict[int, int] = {}
    for s, js in by_source.items():
        left = take[s]
        for job in js:
            if left == 0:
                break
            picked[id(job)] = min(left, job.ids.shape[0])
            left -= picked[id(job)]
    return picked


def _compared(rec: RoutingRecord, rows: int) -> torch.Tensor:
    """(n, E) float32 selection scores before any bias (:meth:`RoutingRecord.ranked`) of the real tokens of a
    record's first ``rows`` sequences (n <= rows · S)."""
    n = rows * rec.batch_shape[1]
    ranked = rec.ranked()
    return ranked[:n][rec.mask[:n].bool().to(ranked.device)].float().cpu()


def _float32_flips(cfg: AnalyzeConfig, jobs: list[_Job], rows: dict[int, int],
                   kept: dict[int, dict[int, torch.Tensor]], *, dtype: torch.dtype, need: int,
                   on_tokens: Callable[[float], None] | None) -> dict:
    """The flip check: ``jobs`` again, through the model loaded in float32, against the scores the analysis's own
    run (in ``dtype``) kept for the same tokens (``kept``: id(job) -> layer position -> (n, E)).

    Both runs see the same token ids in the same batches; each has its *own residual stream* (the float32 run's
    router inputs are float32 all the way from the embeddings), so per MoE layer this counts end-to-end flips,
    what a user of the model in ``dtype`` sees, not the rounding of one router in isolation. Per layer,
    :func:`~moescope.analysis.dtype_flips.dtype_flips` on the selection scores (with the selection bias): the
    tokens whose top-k expert set differs, the near-ties (float32 margin below 2⁻⁸ of the k-th score,
    :data:`~moescope.analysis.routing.NEAR_TIE`) and the flips that are no near-tie. The expert sets are the
    top-k of the scores (plus bias) in both runs; with group-limited selection (DeepSeek-V3's n_group) that
    reading may differ from the family's own choice, equally in both runs.

    Returns ``{"dtype", "reference": "float32", "windows", "seq_len", "placement", "tokens", "layers": [{"layer",
    "name", "tokens", "flips", "near_ties", "flips_not_near_ties", *_share, "all_flips_near_ties"}]}``, or with
    ``"skipped"`` (the reason) where the float32 model cannot be placed (:func:`float32_placement`).
    """
    from moescope.analysis.dtype_flips import dtype_flips, float32_placement

    about = {"dtype": str(dtype).removeprefix("torch."), "reference": "float32", "windows": sum(rows.values()),
             "seq_len": cfg.seq_len}
    placement, how = float32_placement(cfg.placement, need=need)
    if placement is None:
        return {**about, "skipped": how}
    try:
        model, _, views, memory = placement.load(cfg.path, tokens=cfg.seq_len * cfg.batch_size)
    except ValueError as err:  # e.g. a budget too small to stream the float32 model
        return {**about, "skipped": f"the float32 model could not be placed: {err}"}
    chosen = [v for v in views if cfg.layers is None or v.index in cfg.layers]
    position = {v.index: i for i, v in enumerate(chosen)}
    biases = _selection_biases(cfg.path, chosen)
    reference: dict[int, dict[int, torch.Tensor]] = {}

    def count(job: _Job, records: list[RoutingRecord]) -> None:
        reference.setdefault(id(job), {}).update({position[rec.layer]: _compared(rec, rows[id(job)])
                                                  for rec in records})

    _route(model, views, chosen, jobs, memory, count=count, on_tokens=on_tokens)
    layers = []
    for i, v in enumerate(chosen):
        fp32 = torch.cat([reference[id(job)][i] for job in jobs])                      # (n, E)
        low = torch.cat([kept[id(job)][i] for job in jobs])                            # (n, E), same tokens
        layers.append({"layer": v.index, "name": v.name,
                       **dtype_flips(fp32, low, v.top_k, biases[i]).as_dict()})
    return {**about, "placement": how, "tokens": layers[0]["tokens"] if layers else 0, "layers": layers}


def _ablation(cfg: AnalyzeConfig, model: torch.nn.Module, views: list, texts: dict[str, list[int]]) -> dict:
    """The re-route ablation map (:mod:`moescope.analysis.ablate`) on the analysed text: each domain's (or
    unlabelled text's) windows, the exact map where L·E <= 256 cells, else attribution and the top cells."""
    from moescope.analysis.ablate import AblateConfig, ablation_results, windows
    from moescope.analysis.ablation import AblationError

    seq_len = min(cfg.seq_len, 128)
    domains = {d: windows(ids, seq_len, cfg.ablation_windows) for d, ids in texts.items() if len(ids) >= seq_len}
    if not domains:
        return {"skipped": f"no text holds a window of {seq_len} tokens"}
    acfg = AblateConfig(path=cfg.path, modes=("reroute",), layers=cfg.layers, seq_len=seq_len,
                        max_windows=cfg.ablation_windows, batch_size=cfg.batch_size)
    about = {"path": str(cfg.path), "model_type": model.config.model_type,
             "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device)}
    try:
        return ablation_results(model, views, domains, acfg, about)
    except AblationError as err:  # e.g. a model whose output vocabulary is smaller than its tokenizer's ids
        return {"skipped": str(err)}


@dataclass(frozen=True)
class _Job:
    """One forward of ``analyze``: a batch of a source's sequences, or the head of a source (heatmap sample)."""

    source: int            # index into the sources
    ids: torch.Tensor      # (B, S) token ids
    mask: torch.Tensor     # (B, S) attention mask
    sample: bool = False   # the heatmap sample, not counted in the statistics
    start: torch.Tensor | None = None  # (B,) position in its text of each row's first token


def _geometry(cfg: AnalyzeConfig, indices: list[int], rank: int, world: int, *, progress: bool) -> dict:
    """Weight geometry of MoE layers ``indices`` from the safetensors files; under torchrun split by layer."""
    from moescope.analysis.weights import weight_geometry

    mine = indices[rank::world]
    geometry = weight_geometry(cfg.path, layers=tuple(mine), rank=cfg.rank,
                               progress=progress and rank == 0) if mine else {"layers": []}
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, geometry)
        geometry = {**parts[0], "layers": sorted((lay for p in parts for lay in p["layers"]),
                                                 key=lambda lay: lay["index"])}
    return geometry


def _weights_only(cfg: AnalyzeConfig, rank: int, world: int, *, progress: bool) -> dict:
    """``routing=False``: the weight geometry alone, read expert by expert from the files (no model is built, so
    memory stays near one expert matrix); with the read rate and the time a 100 GB checkpoint would take at it."""
    import time

    from moescope.models.shards import DTYPE_BITS

    ckpt = open_checkpoint(cfg.path)
    indices = [lay.index for lay in ckpt.layers if cfg.layers is None or lay.index in cfg.layers]
    if cfg.layers is not None and len(indices) != len(set(cfg.layers)):
        missing = sorted(set(cfg.layers) - set(indices))
        raise ValueError(f"--layers {missing} not found; the model has MoE layers 0..{len(ckpt.layers) - 1}")
    prefixes = tuple(f"{lay.name}." for lay in ckpt.layers if lay.index in indices)
    nbytes = sum(math.prod(info.shape) * DTYPE_BITS.get(info.dtype, 32) // 8
                 for key, info in ckpt.tensors.items() if key.startswith(prefixes))
    base = rss()
    start = time.perf_counter()
    geometry = _geometry(cfg, indices, rank, world, progress=progress)
    seconds = time.perf_counter() - start
    peak = rss("VmHWM")
    first = ckpt.layers[indices[0]] if indices else None
    return {
        "model": {"path": str(cfg.path), "model_type": ckpt.model_type, "family": ckpt.model_type,
                  "num_moe_layers": len(ckpt.layers), "num_experts": first and first.num_experts,
                  "top_k": first and first.view().top_k, "hidden": first and first.hidden, "dtype": None,
                  "device": None},
        "routing": [],
        "samples": [],
        "weights": geometry,
        "weights_only": {"layers": len(indices), "bytes": nbytes, "seconds": seconds,
                         "bytes_per_second": nbytes / seconds if seconds > 0 else None,
                         "seconds_per_100GB": 100e9 * seconds / nbytes if nbytes else None,
                         "peak_rss_growth": None if base is None or peak is None else peak - base},
    }


def _route(model: torch.nn.Module, views: list, chosen: list, jobs: list[_Job], memory: dict | None, *,
           count: Callable[[_Job, list[RoutingRecord]], object],
           on_tokens: Callable[[float], None] | None) -> dict[int, dict]:
    """Every job through ``model`` with ``chosen`` recorded: ``count(job, records)`` for the statistics' jobs;
    returns the samples' records, ``{source: {layer: RoutingRecord}}``.

    A streamed model runs layer-major (:class:`~moescope.models.layer_major.LayerMajor`): each decoder layer is
    read once per chunk of jobs whose residual stream fits ``memory["buffer_tokens"]``, and ``memory`` gains
    ``chunks``, ``layer_reads`` and ``hidden_buffer`` (bytes of the kept residual stream). ``on_tokens`` then
    advances by each job's tokens divided by the rounds, so that a progress bar still totals the tokens.
    """
    sampled: dict[int, dict[int, RoutingRecord]] = {}
    streamed = memory is not None and memory["streamed"]
    replayable = not carrying_state(views)
    runner = LayerMajor(model, views) if streamed and replayable else None
    if streamed and not replayable:   # each forward reads every layer again: N batches, N reads of the weights
        memory["order"] = "batch by batch (the model carries state between decoder layers: no layer-major replay)"
    last = max((runner.layer_of(v) for v in chosen), default=0) if runner is not None else 0
    rounds = last + 1 if runner is not None else 1

    with RoutingRecorder(model, chosen) as recorder:
        def forward(job: _Job) -> None:
            recorder.set_batch(job.ids, job.mask)
            try:
                _forward(model, job.ids, job.mask)
            finally:
                records = recorder.pop()
                if job.sample:
                    sampled.setdefault(job.source, {}).update({rec.layer: rec for rec in records})
                else:
                    count(job, records)
                    if on_tokens is not None:
                        on_tokens(int(job.mask.sum()) / rounds if rounds > 1 else int(job.mask.sum()))

        if runner is None:
            for job in jobs:
                forward(job)
            if streamed:
                memory.update(chunks=len(jobs), layer_reads=model.moescope_streamer.layer_loads)
            return sampled
        chunks = _chunks(jobs, memory["buffer_tokens"])
        for chunk in chunks:
            runner.run(len(chunk), lambda b, chunk=chunk: forward(chunk[b]), layers=[last])
            memory["hidden_buffer"] = max(memory.get("hidden_buffer", 0), runner.hidden_bytes)
        memory.update(chunks=len(chunks), layer_reads=model.moescope_streamer.layer_loads)
    return sampled


def _chunks(jobs: list[_Job], tokens: int) -> list[list[_Job]]:
    """Consecutive jobs grouped so that each group holds at most ``tokens`` tokens (at least one job each):
    the residual stream a layer-major run keeps is one group's."""
    chunks: list[list[_Job]] = []
    held = 0
    for job in jobs:
        n = job.ids.numel()
        if not chunks or held + n > tokens:
            chunks.append([])
            held = 0
        chunks[-1].append(job)
        held += n
    return chunks


def _relabel(rec: RoutingRecord, position: dict[int, int]) -> RoutingRecord:
    """Records carry the view index; the stats count the chosen layers from 0."""
    return replace(rec, layer=position[rec.layer])
