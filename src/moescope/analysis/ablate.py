"""``moescope ablate PATH``: the expert ablation map of a checkpoint on labelled text.

Loads the checkpoint (:func:`~moescope.models.loading.load_moe_model`), cuts each domain's text
into non-overlapping windows of ``seq_len`` tokens (at most ``max_windows``, spread evenly over
the text), runs :func:`~moescope.analysis.ablation.ablate`, and summarises: per mode and MoE
layer the domain × expert matrix of mean loss changes with their intervals, and per domain the
experts whose removal costs most. Computes; the report only lays out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moescope.analysis.ablation import AblationConfig, AblationResult, ablate
from moescope.analysis.analyze import Source, default_sources
from moescope.analysis.interventions import MODES
from moescope.analysis.window_loss import AblationError
from moescope.models.placement import Placed, finish_memory

TOP = 5  # experts listed per domain
ATTRIBUTION_COST = 3.0  # one forward and one backward over the text, a backward counted as two forwards


@dataclass(frozen=True)
class AblateConfig(Placed):
    """What ``moescope ablate`` measures."""

    path: Path
    sources: tuple[Source, ...] = ()          # labelled texts (domain set); empty: the built-in sample
    modes: tuple[str, ...] = MODES
    layers: tuple[int, ...] | None = None
    experts: tuple[int, ...] | None = None
    exact: str = "auto"                       # "all": every cell exactly (see AblationConfig)
    seq_len: int = 128
    max_windows: int = 32                     # windows per domain
    batch_size: int = 8
    draws: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_windows", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (a next-token loss needs two tokens); got {self.seq_len}")
        AblationConfig(modes=self.modes, exact=self.exact, batch_size=self.batch_size, draws=self.draws)  # checks
        super().__post_init__()  # dtype, device, streaming and device map
        for s in self.sources:
            if not s.domain:
                raise ValueError(f"text {s.label!r} has no domain; ablation compares domains (--domain NAME=FILE)")
            if not s.text.strip():
                raise ValueError(f"text source {s.label!r} is empty")


def windows(ids: list[int], seq_len: int, count: int) -> torch.Tensor:
    """(W, seq_len) non-overlapping windows of ``ids``, at most ``count``, spread evenly."""
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of seq_len={seq_len}")
    picks = np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int))
    table = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return table[torch.from_numpy(picks)]


def _listed(a: np.ndarray) -> list:
    """NaN (a cell not measured exactly) -> None, so results.json stays standard JSON."""
    return [None if not np.isfinite(x).all() else (x.tolist() if np.ndim(x) else float(x)) for x in a]


def _computed(res: AblationResult) -> bool:
    """Whether first-order attribution was computed (it needs resident weights: not on a streamed model)."""
    return all(np.isfinite(a).all() for a in res.attribution.values())


def _summary(res: AblationResult, domains: list[str]) -> dict:
    """Per mode: matrices per layer and the costliest experts per domain (all from ``res``)."""
    out = {}
    for mode in res.delta:
        layers = []
        for li, layer in enumerate(res.layers):
            layers.append({"layer": layer, "domains": domains, "experts": res.experts,
                           "mean": [_listed(res.mean(mode, d)[li]) for d in domains],
                           "interval": [_listed(res.intervals[mode][d][li]) for d in domains],
                           "attribution": [_listed(res.attribution[d][li]) for d in domains]})
        top = {}
        for d in domains:
            mean = res.mean(mode, d)
            ranked = np.argsort(-np.nan_to_num(mean, nan=-np.inf), axis=None, kind="stable")
            order = ranked[: min(TOP, len(res.measured))]
            rows = []
            for flat in order:
                li, ei = np.unravel_index(flat, mean.shape)
                lo, hi = res.intervals[mode][d][li, ei]
                rows.append({"layer": res.layers[li], "expert": res.experts[ei], "delta": float(mean[li, ei]),
                             "interval": [float(lo), float(hi)] if np.isfinite([lo, hi]).all() else None,
                             "elsewhere": {o: float(res.mean(mode, o)[li, ei]) for o in domains if o != d}})
            top[d] = rows
        above = {d: int((res.intervals[mode][d][..., 0] > 0).sum()) for d in domains}
        out[mode] = {"layers": layers, "top": top, "above_zero": above, "cells": len(res.measured),
                     "rank_agreement": {d: res.rank_agreement(mode, d) for d in domains}}
    return out


def sentence(top: dict, above: int, cells: int, domain: str, level: float) -> str:
    """One computed sentence per domain: its costliest expert and how many cells lie above zero.

    ``top`` is the domain's first row of the summary table (the numbers it shows), ``above`` the
    number of (layer, expert) cells whose interval lies above zero, of ``cells``. The intervals are
    per cell, not adjusted for the number of cells: about (1 − level)/2 of them lie above zero by
    chance when no expert matters, which the sentence states as the count to compare with.
    """
    lo, hi = top["interval"] or (math.nan, math.nan)
    where = f"expert {top['expert']} of MoE layer {top['layer']}"
    chance = f"{above} of {cells} (layer, expert) cells lie above zero (about {cells * (1 - level) / 2:.1f} by chance)"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return (f"Removing {where} changes the {domain} loss most, by {top['delta']:+.4f} nats "
                "(too few windows for an interval).")
    if lo > 0:
        return (f"Removing {where} raises the {domain} loss most, by {top['delta']:+.4f} nats "
                f"[{lo:+.4f}, {hi:+.4f}]; {chance}.")
    return (f"The largest mean change of the {domain} loss, {top['delta']:+.4f} nats for {where}, has an interval "
            f"[{lo:+.4f}, {hi:+.4f}] that includes zero; {chance}.")


def ablation_results(model, views, domains: dict[str, torch.Tensor], cfg: AblateConfig, about: dict, *,
                     on_step: Callable[[int, int], None] | None = None, buffer: int | None = None) -> dict:
    """Ablate ``model`` on ``domains`` (name -> (W, T) windows) and summarise; ``about`` describes the model
    (path, model_type, dtype, device) for the report; ``buffer`` the bytes of hidden states a layer-major run
    of a streamed model may carry (None: ``AblationConfig``'s default). Returns the dict ``results.json`` holds."""
    start = time.perf_counter()
    acfg = AblationConfig(modes=cfg.modes, layers=cfg.layers, experts=cfg.experts, exact=cfg.exact,
                          batch_size=cfg.batch_size, draws=cfg.draws, seed=cfg.seed, buffer=buffer)
    res = ablate(model, views, domains, acfg, on_step=on_step)
    names = list(domains)
    summary = _summary(res, names)
    first = views[0]
    seq_len = int(next(iter(domains.values())).shape[1])
    return {
        "model": {**about, "family": first.family, "num_moe_layers": len(views), "num_experts": first.num_experts,
                  "top_k": first.top_k},
        "config": {"modes": list(cfg.modes), "exact": cfg.exact, "exact_cells": len(res.measured),
                   "cells": len(res.layers) * len(res.experts), "seq_len": seq_len, "max_windows": cfg.max_windows,
                   "draws": cfg.draws, "seed": cfg.seed, "level": res.level, "top": acfg.top},
        "text": {d: {"windows": int(domains[d].shape[0]), "tokens": int(domains[d].numel())} for d in names},
        "base_loss": {d: float(res.base[d].mean()) for d in names},
        "cost": {"forward_equivalents": res.cost, "naive": res.naive_cost, "ratio": res.naive_cost / res.cost,
                 "attribution_forward_equivalents": ATTRIBUTION_COST if _computed(res) else None,
                 "order": res.order, "layer_loads": res.layer_loads, "cell_layer_loads": res.cell_layer_loads},
        "summary": summary,
        "sentences": {mode: {d: sentence(per["top"][d][0], per["above_zero"][d], per["cells"], d, res.level)
                             for d in names} for mode, per in summary.items()},
        "raw": res.to_dict(),
        "seconds": time.perf_counter() - start,
    }


def run_ablation(cfg: AblateConfig, *, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Load the checkpoint at ``cfg.path``, tokenise its texts, ablate, summarise (:func:`ablation_results`)."""
    model, tokenizer, views, memory = cfg.placement.load(cfg.path, tokens=cfg.seq_len * cfg.batch_size)
    if getattr(model.config, "is_encoder_decoder", False):
        raise AblationError(f"{cfg.path} is an encoder–decoder model ({model.config.model_type}); ablation measures "
                            "the next-token loss of decoder-only language models")
    if tokenizer is None:
        raise ValueError(f"{cfg.path} has no tokenizer files; ablate needs one to turn the text into token ids")
    sources = cfg.sources or default_sources()
    texts: dict[str, list[int]] = {}
    for s in sources:
        texts.setdefault(s.domain, []).extend(tokenizer(s.text, add_special_tokens=False)["input_ids"])
    domains = {d: windows(ids, cfg.seq_len, cfg.max_windows) for d, ids in texts.items()}
    about = {"path": str(cfg.path), "model_type": model.config.model_type,
             "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device)}
    buffer = None  # a streamed model under a budget: what the budget leaves beside one layer's forward
    if memory is not None and memory.get("streamed") and memory.get("budget") is not None:
        buffer = max(1, memory["budget"] - memory["streamed_minimum"])
    results = ablation_results(model, views, domains, cfg, about, on_step=on_step, buffer=buffer)
    if memory is not None:
        results["memory"] = finish_memory(model, memory)
    return results
