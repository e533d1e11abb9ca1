"""``moescope analyze``: routing health and weight geometry of an MoE checkpoint on disk.

Loads the checkpoint (``moescope.models.load_moe_model``), streams the given texts through
it in fixed-length sequences while a :class:`~moescope.models.RoutingRecorder` captures what
every MoE layer did, accumulates :class:`~moescope.analysis.routing.RoutingStats` (memory
independent of the amount of text), records token × expert weights for a short sample of
each text (the heatmaps), and measures the weight geometry straight from the safetensors
files (:func:`moescope.analysis.weights.weight_geometry`). Returns one JSON-ready dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from moescope.analysis.routing import RoutingStats, SaturationStats
from moescope.analysis.sample_text import sample_domains
from moescope.models import RoutingRecorder, load_moe_model
from moescope.models.view import RoutingRecord


@dataclass(frozen=True)
class Source:
    """One text to route: a label, an optional domain, the text itself."""

    label: str
    text: str
    domain: str | None = None


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``moescope analyze`` measures."""

    path: Path
    sources: tuple[Source, ...] = ()      # empty: the built-in code / language / math sample
    layers: tuple[int, ...] | None = None  # MoE layer indices to analyse (None = all)
    seq_len: int = 256                     # tokens per sequence fed to the model
    batch_size: int = 4                    # sequences per forward pass
    max_tokens: int = 50_000               # per source: enough for stable loads, bounded time
    heatmap_tokens: int = 48               # tokens per sample in the token x expert heatmaps
    weights: bool = True                   # also measure weight geometry from the safetensors files
    rank: int | None = None                # expert subspace rank (None: by energy threshold)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "max_tokens", "heatmap_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)}")
        for s in self.sources:
            if not s.text.strip():
                raise ValueError(f"text source {s.label!r} is empty")


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
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if getattr(model.config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids  # teacher-force the same text through the decoder
    with torch.no_grad():
        model(**kwargs)


def _dense_weights(rec: RoutingRecord) -> list[list[float]]:
    """(T, E) combine weights of the experts actually used (0 elsewhere)."""
    dense = torch.zeros(rec.indices.shape[0], rec.scores.shape[-1])
    valid = rec.indices >= 0
    dense.scatter_(1, rec.indices.clamp_min(0), torch.where(valid, rec.weights.float(), 0.0))
    return dense.tolist()


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


def analyze(cfg: AnalyzeConfig, *, on_tokens: Callable[[int], None] | None = None) -> dict:
    """Run the analysis; ``on_tokens(n)`` is called as batches finish (progress bars).

    Under torchrun with W processes, rank r routes batches r, r + W, ...; the statistics
    are all-reduced (sums, so the result equals one process's exactly for counts and to
    float rounding for probability sums), weight geometry is split by layer, and every
    rank returns the same dict.
    """
    rank, world = _distributed()
    model, tokenizer, views = load_moe_model(cfg.path)
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
    stats = RoutingStats([v.num_experts for v in chosen], [v.top_k for v in chosen], domains=domains,
                         vocab_size=len(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_counts, samples = {}, []
    with RoutingRecorder(model, chosen) as recorder:
        for src in sources:
            ids = tokenizer(src.text, add_special_tokens=False)["input_ids"][: cfg.max_tokens]
            if not ids:
                raise ValueError(f"text source {src.label!r} tokenizes to nothing")
            token_counts[src.label] = len(ids)
            seqs, masks = _sequences(ids, cfg.seq_len, pad)
            for number, start in enumerate(range(0, seqs.shape[0], cfg.batch_size)):
                if number % world != rank:
                    continue
                batch, mask = seqs[start : start + cfg.batch_size], masks[start : start + cfg.batch_size]
                recorder.set_batch(batch, mask)
                _forward(model, batch, mask)
                for rec in recorder.pop():
                    stats.update(_relabel(rec, position), src.domain)
                if on_tokens is not None:
                    on_tokens(int(mask.sum()))
            head = torch.tensor([ids[: cfg.heatmap_tokens]])
            recorder.set_batch(head, torch.ones_like(head))
            _forward(model, head, torch.ones_like(head))
            samples.append({"name": src.label, "tokens": [tokenizer.decode([t]) for t in head[0].tolist()],
                            "weights": {rec.layer: _dense_weights(rec) for rec in recorder.pop()}})
    if world > 1:
        stats.all_reduce()
    routing = []
    for i, v in enumerate(chosen):
        summary = stats.summary(i)
        summary.update({"layer": v.index, "name": v.name})
        routing.append(summary)
    first = chosen[0] if chosen else None
    results = {
        "model": {"path": str(cfg.path), "model_type": model.config.model_type, "family": first and first.family,
                  "num_moe_layers": len(views), "num_experts": first and first.num_experts,
                  "top_k": first and first.top_k, "hidden": first and first.hidden},
        "text": {"sources": list(token_counts), "tokens": sum(token_counts.values()), "per_source": token_counts,
                 "domains": list(domains), "seq_len": cfg.seq_len},
        "routing": routing,
        "samples": samples,
    }
    del model
    if cfg.weights:
        from moescope.analysis.weights import weight_geometry

        indices = [v.index for v in chosen]
        mine = indices[rank::world]
        geometry = weight_geometry(cfg.path, layers=tuple(mine), rank=cfg.rank,
                                   progress=on_tokens is not None and rank == 0) if mine else {"layers": []}
        if world > 1:
            import torch.distributed as dist

            parts = [None] * world
            dist.all_gather_object(parts, geometry)
            geometry = {**parts[0], "layers": sorted((lay for p in parts for lay in p["layers"]),
                                                     key=lambda lay: lay["index"])}
        results["weights"] = geometry
    return results


def _relabel(rec: RoutingRecord, position: dict[int, int]) -> RoutingRecord:
    """Records carry the view index; the stats count the chosen layers from 0."""
    return RoutingRecord(layer=position[rec.layer], indices=rec.indices, weights=rec.weights, scores=rec.scores,
                         batch_shape=rec.batch_shape, mask=rec.mask, token_ids=rec.token_ids)


def compare(path_a: Path, path_b: Path, sources: tuple[Source, ...], *, seq_len: int = 256,
            batch_size: int = 4, max_tokens: int = 50_000) -> dict:
    """Router saturation (OLMoE §5) and weight drift between two checkpoints of one model."""
    model_a, tok, views_a = load_moe_model(path_a)
    model_b, _, views_b = load_moe_model(path_b)
    if tok is None:
        raise ValueError(f"{path_a} has no tokenizer files; compare needs one")
    if [(v.num_experts, v.top_k) for v in views_a] != [(v.num_experts, v.top_k) for v in views_b]:
        raise ValueError("the two checkpoints have different MoE layouts; compare needs the same architecture")
    sat = SaturationStats(len(views_a))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with RoutingRecorder(model_a, views_a) as rec_a, RoutingRecorder(model_b, views_b) as rec_b:
        for src in sources:
            ids = tok(src.text, add_special_tokens=False)["input_ids"][:max_tokens]
            seqs, masks = _sequences(ids, seq_len, pad)
            for start in range(0, seqs.shape[0], batch_size):
                batch, mask = seqs[start : start + batch_size], masks[start : start + batch_size]
                for rec, model in ((rec_a, model_a), (rec_b, model_b)):
                    rec.set_batch(batch, mask)
                    _forward(model, batch, mask)
                for a, b in zip(rec_a.pop(), rec_b.pop(), strict=True):
                    sat.update(a, b)
    drift = []
    for va, vb in zip(views_a, views_b, strict=True):
        ra, rb = va.router_weight.float(), vb.router_weight.float()
        cos = torch.nn.functional.cosine_similarity(ra, rb, dim=-1)
        delta = [float((va.expert(e).input_projection() - vb.expert(e).input_projection()).norm()
                       / va.expert(e).input_projection().norm().clamp_min(1e-30)) for e in range(va.num_experts)]
        drift.append({"layer": va.index, "router_row_cosine": cos.tolist(), "expert_relative_change": delta})
    return {"a": str(path_a), "b": str(path_b), "saturation": sat.saturation(), "tokens": sat.tokens.tolist(),
            "drift": drift}
