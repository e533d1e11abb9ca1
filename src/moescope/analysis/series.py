"""A checkpoint series: how routing and experts change over training, one checkpoint in memory at a time.

Given checkpoints of one model in training order (``moescope analyze A B C``, or a folder of
``checkpoint-N`` / ``step_N`` directories, ordered by N), every checkpoint routes the same tokens and is
compared with the **last** one:

* **router saturation** (OLMoE, Muennighoff et al. 2024, §5): per MoE layer, the mean share of a token's
  top-k experts at this checkpoint that are also among its top-k at the last, against the share a
  token-blind router with the same loads would keep (``k · Σ_e load_t(e) · load_last(e)``, the exact
  mean of the overlap when one checkpoint's choices are shuffled across tokens);
* **routing curves**: load CV, router entropy, domain specialisation (NMI of domain and expert) and
  vocabulary specialisation (:mod:`moescope.analysis.vocabulary`) per checkpoint;
* **expert similarity** (the lab's claim 7, on any run): the experts' mean subspace overlap relative to
  random regroupings of the same hidden units (:mod:`moescope.analysis.expert_null`), at one rank per
  layer — the last checkpoint's — for every checkpoint, read from the files; its change from the first
  to the last checkpoint has the interval of the paired null draws and is decided on claim 7's margin;
* **weight drift** per expert: the relative change of its input projection and the cosine of its router
  row, against the last checkpoint, read expert by expert from the two checkpoints' files.

The last checkpoint is routed first and only its expert choices are kept (k small integers per token
and layer); each other checkpoint is then loaded, routed and freed, so memory holds one model at a time.
Two checkpoints are ``moescope compare``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moescope.analysis.analyze import Source, _Job, _relabel, _route, _sequences, default_sources
from moescope.analysis.checkpoint import open_checkpoint
from moescope.analysis.expert_null import hidden_units, units_rank, view_grouping_null
from moescope.analysis.routing import RoutingStats, topk_overlap
from moescope.models.loading import load_tokenizer
from moescope.models.placement import Placed, finish_memory
from moescope.models.view import RoutingRecord
from moescope.stats import decide

__all__ = ["SIMILARITY_MARGIN", "SeriesConfig", "checkpoint_series", "order_checkpoints"]

# Claim 7's margin: the overlap relative to random regroupings must fall by more than 0.03 (3% of the chance
# level) from the first to the last checkpoint; less is within a few times the null's own spread.
SIMILARITY_MARGIN = 0.03
_STEP = re.compile(r"(?:checkpoint|step|ckpt|iter|global_step)[-_]?(\d+)$", re.IGNORECASE)
# config.json fields that differ between checkpoints of one run without changing the architecture
_NOT_ARCHITECTURE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
                     "_commit_hash", "use_cache"}


def _step(path: Path) -> int | None:
    m = _STEP.search(path.name)
    return int(m.group(1)) if m else None


def order_checkpoints(paths: tuple[Path, ...] | list[Path]) -> list[tuple[str, int | None, Path]]:
    """``(label, step, path)`` in training order.

    One folder without ``config.json``: its ``checkpoint-N`` / ``step_N`` / ``ckpt-N`` / ``iter_N``
    subfolders, by N. Several paths: as given. Raises ValueError naming the problem before any work.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir() and not (paths[0] / "config.json").is_file():
        found = sorted(((s, p) for p in paths[0].iterdir() if p.is_dir() and (s := _step(p)) is not None),
                       key=lambda sp: sp[0])
        if len(found) < 2:
            raise ValueError(f"{paths[0]} holds {len(found)} checkpoint folders named checkpoint-N, step_N, ckpt-N "
                             "or iter_N; a series needs at least two (or give the checkpoints themselves)")
        paths = [p for _, p in found]
    if len(paths) < 2:
        raise ValueError("a checkpoint series needs at least two checkpoints (A B ...) or a folder of them")
    for p in paths:
        if not (p / "config.json").is_file():
            raise ValueError(f"{p} is not a checkpoint directory (no config.json)")
    configs = {p: {k: v for k, v in json.loads((p / "config.json").read_text()).items() if k not in _NOT_ARCHITECTURE}
               for p in paths}
    last = configs[paths[-1]]
    for p in paths[:-1]:
        diff = sorted(k for k in set(configs[p]) | set(last) if configs[p].get(k) != last.get(k))
        if diff:
            raise ValueError(f"{p} and {paths[-1]} are not checkpoints of one architecture: config.json differs in "
                             f"{diff[:8]}")
    return [(p.name, _step(p), p) for p in paths]


@dataclass(frozen=True)
class SeriesConfig(Placed):
    """What a checkpoint series measures (the placement fields of :class:`Placed` apply to every checkpoint)."""

    paths: tuple[Path, ...]
    sources: tuple[Source, ...] = ()       # empty: the built-in code / language / math sample
    layers: tuple[int, ...] | None = None  # MoE layer indices (None = all)
    seq_len: int = 256
    batch_size: int = 4
    max_tokens: int = 20_000               # per source
    draws: int = 200                       # permutation draws of the expert-similarity null (0: no similarity)
    checkpoints: tuple = field(init=False, default=())

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)}")
        if self.draws and self.draws < 20:
            raise ValueError(f"draws must be 0 (no similarity) or >= 20; got draws={self.draws}")
        super().__post_init__()
        object.__setattr__(self, "checkpoints", tuple(order_checkpoints(self.paths)))


def _routing(cfg: SeriesConfig, path: Path, jobs: list[_Job], domains: tuple[str, ...], sources: tuple[Source, ...],
             on_tokens: Callable[[float], None] | None) -> tuple[list[dict], list[torch.Tensor], dict | None]:
    """Route ``jobs`` through one checkpoint: per chosen layer its summary and the (N, k) expert sets in job order."""
    model, tokenizer, views, memory = cfg.placement.load(path, tokens=cfg.seq_len * cfg.batch_size)
    chosen = [v for v in views if cfg.layers is None or v.index in cfg.layers]
    position = {v.index: i for i, v in enumerate(chosen)}
    stats = RoutingStats([v.num_experts for v in chosen], [v.top_k for v in chosen], domains=domains,
                         vocab_size=len(tokenizer) if tokenizer is not None else None)
    sets: dict[tuple[int, int], torch.Tensor] = {}
    order = {id(job): i for i, job in enumerate(jobs)}

    def count(job: _Job, records: list[RoutingRecord]) -> None:
        for rec in records:
            stats.update(_relabel(rec, position), sources[job.source].domain)
            sets[order[id(job)], position[rec.layer]] = rec.indices[rec.mask.bool()].to(torch.int32)

    _route(model, views, chosen, jobs, memory, count=count, on_tokens=on_tokens)
    summaries = []
    for i, v in enumerate(chosen):
        s = stats.summary(i)
        vocab = s.get("tokens_specialisation", {}).get("vocabulary", {}).get("summary")
        summaries.append({"layer": v.index, "top_k": v.top_k, "load": s["load"], "load_cv": s["load_cv"],
                          "router_entropy": s["router_entropy"],
                          "domain_nmi": s["domains"]["nmi"] if "domains" in s else None,
                          "vocabulary_excess": vocab["excess"] if vocab else None})
    per_layer = [torch.cat([sets[j, i] for j in range(len(jobs))]) for i in range(len(chosen))]
    mem = finish_memory(model, memory) if memory is not None else None
    del model
    return summaries, per_layer, mem


def _drift(path: Path, last: Path, layers: list[int]) -> list[dict]:
    """Per layer and expert, from the files: relative change of the input projection and router-row cosine."""
    a, b = open_checkpoint(path), open_checkpoint(last)
    out = []
    for index in layers:
        la, lb = a.layer(index), b.layer(index)
        ra, rb = la.router_weight().double(), lb.router_weight().double()
        change = []
        for e in range(la.num_experts):
            wa, wb = la.input_projection(e, dtype=torch.float64), lb.input_projection(e, dtype=torch.float64)
            change.append(float((wa - wb).norm() / wb.norm().clamp_min(1e-300)))
        out.append({"layer": index, "expert_relative_change": change,
                    "router_row_cosine": torch.nn.functional.cosine_similarity(ra, rb, dim=-1).tolist()})
    return out


def _similarity(path: Path, layers: list[int], ranks: dict[int, int], draws: int) -> list[dict]:
    ckpt = open_checkpoint(path)
    out = []
    for index in layers:
        res = view_grouping_null(ckpt.layer(index), rank=ranks[index], draws=draws)
        out.append({"layer": index, **{k: res.get(k) for k in ("rank", "observed", "null_mean", "ratio", "skipped")},
                    "null": res.get("null")})
    return out


def _similarity_change(first: list[dict], last: list[dict], level: float = 0.95) -> dict | None:
    """Claim 7 on this run: mean over layers of ratio_last − ratio_first, the interval of the paired null draws."""
    pairs = [(f, la) for f, la in zip(first, last, strict=True) if f.get("null") and la.get("null")]
    if not pairs:
        return None
    per_draw = np.mean([np.asarray(la["observed"]) / np.asarray(la["null"])
                        - np.asarray(f["observed"]) / np.asarray(f["null"]) for f, la in pairs], axis=0)
    effect = float(np.mean([la["ratio"] - f["ratio"] for f, la in pairs]))
    lo, hi = np.quantile(per_draw, [(1 - level) / 2, (1 + level) / 2])
    interval = (float(lo), float(hi))
    return {"effect": effect, "interval": list(interval), "level": level, "margin": SIMILARITY_MARGIN,
            "layers": len(pairs), "verdict": decide(interval, 0.0, SIMILARITY_MARGIN, "less")}


def checkpoint_series(cfg: SeriesConfig, *, on_checkpoint: Callable[[str], None] | None = None,
                      on_tokens: Callable[[float], None] | None = None) -> dict:
    """Route the same text through every checkpoint of ``cfg`` and compare each with the last (module docstring).

    Returns a JSON-ready dict: ``checkpoints`` (label, step, path), ``text``, ``layers`` and per checkpoint
    ``series[i]`` with ``routing`` (per layer), ``saturation`` and ``chance_saturation`` (per layer),
    ``similarity`` and ``drift`` (per layer); ``similarity_change`` (claim 7's rule on this run) and, when
    placement options bound memory, each checkpoint's ``memory``.
    """
    ckpts = cfg.checkpoints
    last = ckpts[-1][2]
    tokenizer = load_tokenizer(last)
    if tokenizer is None:
        raise ValueError(f"{last} has no tokenizer files; a series routes text with the last checkpoint's tokenizer")
    sources = cfg.sources or default_sources()
    domains = tuple(dict.fromkeys(s.domain for s in sources if s.domain))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    jobs, tokens = [], 0
    for number, src in enumerate(sources):
        ids = tokenizer(src.text, add_special_tokens=False)["input_ids"][: cfg.max_tokens]
        if not ids:
            raise ValueError(f"text source {src.label!r} tokenizes to nothing")
        tokens += len(ids)
        seqs, masks = _sequences(ids, cfg.seq_len, pad)
        jobs += [_Job(number, seqs[s : s + cfg.batch_size], masks[s : s + cfg.batch_size])
                 for s in range(0, seqs.shape[0], cfg.batch_size)]
    disk = open_checkpoint(last)
    layers = [lay.index for lay in disk.layers if cfg.layers is None or lay.index in cfg.layers]
    missing = sorted(set(cfg.layers or ()) - set(layers))
    if missing:
        raise ValueError(f"--layers {missing} not found; the model has MoE layers 0..{len(disk.layers) - 1}")
    ranks = {i: units_rank(hidden_units(disk.layer(i))) for i in layers} if cfg.draws else {}

    order = [len(ckpts) - 1, *range(len(ckpts) - 1)]     # the last first: the others are compared with it
    results: list[dict | None] = [None] * len(ckpts)
    final_sets: list[torch.Tensor] = []
    final_load: list[np.ndarray] = []
    for i in order:
        label, step, path = ckpts[i]
        if on_checkpoint is not None:
            on_checkpoint(label)
        routing, sets, memory = _routing(cfg, path, jobs, domains, sources, on_tokens)
        if i == len(ckpts) - 1:
            final_sets, final_load = sets, [np.asarray(r["load"]) for r in routing]
        saturation = [topk_overlap(s, f) for s, f in zip(sets, final_sets, strict=True)]
        chance = [float(r["top_k"] * np.dot(np.asarray(r["load"]), fl)) for r, fl in zip(routing, final_load,
                                                                                           strict=True)]
        entry = {"label": label, "step": step, "path": str(path), "routing": routing, "saturation": saturation,
                 "chance_saturation": chance,
                 "similarity": _similarity(path, layers, ranks, cfg.draws) if cfg.draws else None,
                 "drift": _drift(path, last, layers)}
        if memory is not None:
            entry["memory"] = memory
        results[i] = entry
    change = (_similarity_change(results[0]["similarity"], results[-1]["similarity"])
              if cfg.draws else None)
    for entry in results:          # the null draws decided; the report needs only their summary
        for s in entry["similarity"] or ():
            s.pop("null", None)
    return {"checkpoints": [{"label": lab, "step": st, "path": str(p)} for lab, st, p in ckpts],
            "text": {"sources": [s.label for s in sources], "tokens": tokens, "domains": list(domains),
                     "seq_len": cfg.seq_len},
            "layers": layers, "series": results, "similarity_change": change, "model_type": disk.model_type}


def saturation_text(res: dict) -> list[str]:
    """One line per checkpoint: its mean saturation against the last, and chance (for the terminal)."""
    lines = []
    for entry in res["series"][:-1]:
        sat, chance = np.mean(entry["saturation"]), np.mean(entry["chance_saturation"])
        lines.append(f"{entry['label']}: saturation {sat:.3f} (token-blind {chance:.3f}) over "
                     f"{len(entry['saturation'])} MoE layers")
    return lines

