"""Expert ablation: what each expert does, measured by removing it.

For every MoE layer *l* and routed expert *e* (or the ones asked for), the change of next-token
loss on each domain's windows when *e* is taken out of *l*, with a bootstrap interval over windows
(the per-window differences are paired: the same window with and without the expert). This module
is the map (:func:`ablate`, :class:`AblationConfig`, :class:`AblationResult`); its parts live beside it:

* :mod:`moescope.analysis.interventions`: the two modes, re-route (``"reroute"``) and zero
  (``"zero"``), and the first-order attribution that estimates every zero-mode cell at once;
* :mod:`moescope.analysis.residual_replay`: the cost — the residual cache that re-runs only the
  layers ≥ *l*, and the layer-major passes of a layer-streamed model;
* :mod:`moescope.analysis.window_loss`: the loss, mean next-token cross entropy per window.

**Exact cells.** ``AblationConfig.exact`` decides which cells are also measured exactly, beside the
attribution: all of them up to ``exact_limit`` (256), otherwise the ``top`` 16 per domain by
attribution. The rank agreement of the two is reported (:meth:`AblationResult.rank_agreement`), not
assumed.

Encoder–decoder checkpoints (Switch Transformers) are refused: their loss is span corruption,
which needs a masking recipe this module does not define.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from moescope.analysis.interventions import INTERVENTIONS, MODES, attribution, reroute, zero
from moescope.analysis.residual_replay import NotLayerMajor, ResidualCache, layer_major, streams_per_pass
from moescope.analysis.window_loss import AblationError, window_losses
from moescope.models.layer_major import carrying_state
from moescope.models.sizes import parse_size
from moescope.models.view import MoELayerView
from moescope.stats import DEFAULT_LEVEL, bootstrap_interval

__all__ = [  # the map, and what earlier code imported from here before the split (re-exported)
    "MODES",
    "AblationConfig",
    "AblationError",
    "AblationResult",
    "ablate",
    "attribution",
    "reroute",
    "streams_per_pass",
    "window_losses",
    "zero",
]

# --------------------------------------------------------------------------- the map

EXACT = ("auto", "all")
ORDERS = ("auto", "cell", "layer")


@dataclass(frozen=True)
class AblationConfig:
    """What :func:`ablate` measures.

    ``exact``: ``"all"`` measures every selected (layer, expert) exactly; ``"auto"`` does so when
    there are at most ``exact_limit`` of them, and otherwise measures exactly the ``top`` experts of
    each domain by first-order attribution (which is computed for every cell in both cases).

    ``order``: ``"cell"`` measures one ablated cell after another from the residual cache;
    ``"layer"`` runs layer-major (see :func:`ablate`), carrying at most ``buffer`` bytes of hidden
    states (bytes or a size such as ``"2GiB"``; None: :data:`~moescope.models.streaming.DEFAULT_BUFFER`,
    1 GiB); ``"auto"`` is ``"layer"`` for a layer-streamed model and ``"cell"`` otherwise.
    """

    modes: tuple[str, ...] = MODES
    layers: tuple[int, ...] | None = None    # MoE layer indices (None: all)
    experts: tuple[int, ...] | None = None   # expert indices (None: all of each layer)
    exact: str = "auto"
    exact_limit: int = 256
    top: int = 16
    batch_size: int = 8                      # windows per forward
    level: float = DEFAULT_LEVEL             # the bootstrap interval's level
    draws: int = 2000                        # bootstrap draws
    seed: int = 0
    order: str = "auto"                      # layer-major on a layer-streamed model: each layer read once a pass
    buffer: int | str | None = None          # hidden states a layer-major pass carries (None: 1 GiB)

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {self.order!r}")
        if self.buffer is not None:
            try:
                parse_size(self.buffer)
            except (TypeError, ValueError) as err:  # the message names the value and the accepted forms
                raise type(err)(f"buffer (bytes of hidden states a layer-major pass carries): {err}") from None
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f"modes must be a non-empty subset of {', '.join(MODES)}; got {self.modes!r}")
        if self.exact not in EXACT:
            raise ValueError(f"exact must be one of {', '.join(EXACT)}; got {self.exact!r}")
        for name in ("batch_size", "exact_limit", "top"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)}")
        if self.draws < 100:
            raise ValueError(f"draws must be >= 100; got {self.draws}")


@dataclass
class AblationResult:
    """The ablation map.

    ``base[domain]`` (W,) per-window loss of the intact model; ``delta[mode][domain]`` (n_layers,
    n_experts, W) per-window loss change (ablated − intact; positive: the expert helped), NaN for a
    cell not measured exactly; ``intervals[mode][domain]`` (n_layers, n_experts, 2);
    ``attribution[domain]`` (n_layers, n_experts) the first-order estimate of the zero-mode mean;
    ``measured`` the (layer position, expert position) cells measured exactly; ``cost`` forward-pass
    equivalents spent on exact ablations (the intact pass included; layer-major also the plain forward of
    its check and the intact stream's re-runs in later passes) and ``naive_cost`` what whole forwards
    would have cost for the same cells; ``order`` the order they were run in (``"cell"`` or ``"layer"``).
    On a layer-streamed model, ``layer_loads`` counts the decoder layers read from disk for the exact
    ablations (measured by the streamer) and ``cell_layer_loads`` what the cell-by-cell order reads for
    the same cells: one per decoder layer per batch for the intact pass, and each ablated cell's layers
    ≥ l per batch again (both None for a model in memory).
    """

    layers: list[int]
    experts: list[int]
    base: dict[str, np.ndarray]
    delta: dict[str, dict[str, np.ndarray]]
    attribution: dict[str, np.ndarray]
    measured: list[tuple[int, int]]
    cost: float
    naive_cost: float
    level: float
    draws: int
    seed: int
    intervals: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    order: str = "cell"
    layer_loads: int | None = None
    cell_layer_loads: int | None = None

    def mean(self, mode: str, domain: str) -> np.ndarray:
        """(n_layers, n_experts) mean loss change (NaN where not measured)."""
        return self.delta[mode][domain].mean(axis=-1)

    def rank_agreement(self, mode: str, domain: str) -> float | None:
        """Spearman correlation of attribution and exact mean over the measured cells (None if < 3)."""
        from scipy.stats import spearmanr

        if len(self.measured) < 3:
            return None
        rows, cols = zip(*self.measured, strict=True)
        exact, approx = self.mean(mode, domain)[rows, cols], self.attribution[domain][rows, cols]
        if not np.isfinite(approx).all() or np.ptp(exact) == 0 or np.ptp(approx) == 0:
            return None
        return float(spearmanr(approx, exact).statistic)

    def to_dict(self) -> dict:
        def listed(a: np.ndarray) -> list:  # JSON has no NaN: a cell not measured (or not computed) is null
            a = np.asarray(a, dtype=float)
            return np.where(np.isfinite(a), a, None).tolist()

        return {"layers": self.layers, "experts": self.experts, "level": self.level, "draws": self.draws,
                "seed": self.seed, "cost_forward_equivalents": self.cost, "naive_forward_equivalents": self.naive_cost,
                "order": self.order, "layer_loads": self.layer_loads, "cell_layer_loads": self.cell_layer_loads,
                "measured": [list(c) for c in self.measured],
                "base_loss": {d: v.tolist() for d, v in self.base.items()},
                "attribution": {d: listed(v) for d, v in self.attribution.items()},
                "delta": {m: {d: {"mean": listed(self.mean(m, d)), "interval": listed(self.intervals[m][d]),
                                  "per_window": listed(v)} for d, v in per.items()}
                          for m, per in self.delta.items()}}


def _exact_cells(attr: dict[str, np.ndarray], cfg: AblationConfig) -> list[tuple[int, int]]:
    """Every cell, or the union over domains of the ``top`` cells by attribution (see AblationConfig)."""
    shape = next(iter(attr.values())).shape
    every = [(li, ei) for li in range(shape[0]) for ei in range(shape[1])]
    if cfg.exact == "all" or len(every) <= cfg.exact_limit:
        return every
    chosen: set[tuple[int, int]] = set()
    for a in attr.values():
        for flat in np.argsort(-a, axis=None, kind="stable")[: cfg.top]:
            chosen.add(tuple(int(i) for i in np.unravel_index(flat, shape)))
    return sorted(chosen)


def _not_resident(model: nn.Module, views: list[MoELayerView], experts: list[int], domains: dict, cfg: AblationConfig
                  ) -> dict[str, np.ndarray]:
    """A model whose MoE weights are not resident between forwards (layer-streamed, or offloaded by accelerate):
    re-routing works (it rewrites the router's scores during the forward), but zeroing a weight and the
    gradients attribution needs do not. Refuses what cannot be measured; returns attribution as NaN."""
    how = "layer-streamed" if getattr(model, "moescope_streamer", None) is not None else "offloaded"
    if "zero" in cfg.modes:
        raise AblationError(f"zero mode edits an expert's resident down projection, and this {how} model keeps its "
                            "MoE weights only inside each forward; use --mode reroute, or load the model in memory")
    cells = len(views) * len(experts)
    if cfg.exact != "all" and cells > cfg.exact_limit:
        raise AblationError(f"{cells} cells exceed the exact limit ({cfg.exact_limit}), and the first-order "
                            f"attribution that would choose among them needs gradients of resident weights, which "
                            f"this {how} model does not keep; measure every cell (--exact all) or fewer "
                            "(--layers, --experts)")
    return {d: np.full((len(views), len(experts)), np.nan) for d in domains}


def _cell_by_cell(model: nn.Module, cache: ResidualCache, chosen: list[MoELayerView], experts: list[int],
                  jobs: list[tuple[int, int, str]], batches: dict[str, list[Tensor]], cfg: AblationConfig,
                  on_step: Callable[[int, int], None] | None) -> tuple[dict, dict, float]:
    """The intact pass records the residual cache; each job ``(layer position, expert position, mode)`` then
    re-runs the layers ≥ its decoder layer per batch. Returns ``(base, losses, cost)``: ``base[domain]`` (W,),
    ``losses[job][domain]`` (W,) and the forward-pass equivalents spent."""
    n_dec = len(cache.layers)
    base = {}
    for d, chunks in batches.items():
        parts = []
        for b, chunk in enumerate(chunks):
            with cache.recording((d, b)):
                parts.append(window_losses(model, chunk))
        base[d] = torch.cat(parts).numpy()
    losses, cost = {}, 1.0
    for done, (li, ei, mode) in enumerate(jobs, 1):
        view, e = chosen[li], experts[ei]
        start = cache.layer_of(view)
        per = {}
        for d, chunks in batches.items():
            parts = []
            for b, chunk in enumerate(chunks):
                with cache.starting_at(start, (d, b)), INTERVENTIONS[mode](view, e):
                    parts.append(window_losses(model, chunk))
            per[d] = torch.cat(parts).numpy()
        losses[(li, ei, mode)] = per
        cost += (n_dec - start) / n_dec
        if on_step is not None:
            on_step(done, len(jobs))
    return base, losses, cost


def ablate(model: nn.Module, views: list[MoELayerView], domains: dict[str, Tensor],
           cfg: AblationConfig = AblationConfig(), *, on_step: Callable[[int, int], None] | None = None
           ) -> AblationResult:
    """The loss change of the selected (layer, expert) cells per domain and mode.

    Args:
        model: a live causal LM whose forward takes ``input_ids`` and returns ``.logits``.
        views: its MoE layers (:func:`~moescope.models.adapters.find_moe_layers`).
        domains: name -> (W, T) int64 token windows (W ≥ 1, T ≥ 2), no padding.
        on_step: ``on_step(done, total)`` after each exactly ablated (layer, expert, mode); in layer-major
            order the cells of a pass finish together, at its end.

    **Order.** Cell by cell, every ablated cell re-runs the decoder layers ≥ its own per batch; on a
    layer-streamed model each of those forwards reads its layers from disk again, L·E·L/2 layer reads for
    a whole map. Layer-major (``cfg.order``; the default for a streamed model) reads each decoder layer
    once per *pass*: a pass holds layer l resident (:meth:`~moescope.models.streaming.LayerStreamer.hold`)
    and pushes through it the hidden state of every stream active at that depth — the intact model's,
    and each ablated cell's from its own layer on (which starts from the intact stream's state there).
    Cells are chunked into passes so the carried hidden states, (1 + C) · tokens · H values, fit
    ``cfg.buffer`` (1 GiB by default); the layer reads are then (passes + 1) · L, one plain forward
    checking that the model can be replayed layer-major (:attr:`AblationResult.layer_loads`, beside the
    cell-by-cell count). Both orders run the family's own forward on the same batches, so they agree to
    float tolerance. A family the registry marks as carrying state between layers besides their outputs
    (``Family.replayable``) goes cell by cell under ``order="auto"`` without trying; a model that fails
    the check is measured cell by cell under ``"auto"`` and refused under ``"layer"``.
    """
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise AblationError(f"{type(model).__name__} is an encoder–decoder model; ablation measures next-token "
                            "loss of decoder-only language models (a span-corruption loss is not defined here)")
    if not domains:
        raise AblationError("no domains to measure the loss on")
    for name, ids in domains.items():
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
            raise AblationError(f"domain {name!r}: expected (windows, tokens) ids with tokens >= 2; got "
                                f"{tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__}")
    by_index = {v.index: v for v in views}
    layers = sorted(by_index) if cfg.layers is None else list(cfg.layers)
    missing = [i for i in layers if i not in by_index]
    if missing or not layers:
        raise AblationError(f"MoE layers {missing or layers} do not exist; this model has {sorted(by_index)}")
    num_experts = min(by_index[i].num_experts for i in layers)
    experts = list(range(num_experts)) if cfg.experts is None else list(cfg.experts)
    bad = [e for e in experts if not (isinstance(e, int) and not isinstance(e, bool) and 0 <= e < num_experts)]
    if bad or not experts:
        raise AblationError(f"experts {bad or experts} do not exist in every selected layer; allowed: "
                            f"0..{num_experts - 1}")
    chosen = [by_index[i] for i in layers]
    cache = ResidualCache(model, chosen)
    n_dec = len(cache.layers)
    batches = {d: list(ids.split(cfg.batch_size)) for d, ids in domains.items()}
    if all(not p.is_meta for v in chosen for p in v.module.parameters()):
        attr = {d: attribution(model, chosen, experts, ids, cfg.batch_size) for d, ids in domains.items()}
    else:
        attr = _not_resident(model, chosen, experts, domains, cfg)
    cells = _exact_cells(attr, cfg)
    jobs = [(li, ei, mode) for li, ei in cells for mode in cfg.modes]
    streamer = getattr(model, "moescope_streamer", None)
    # auto: layer-major for a streamed model whose family may be replayed (Family.replayable); the plain-forward
    # check in layer_major still guards a family the registry does not know to carry state
    replayable = not carrying_state(chosen)
    order = cfg.order if cfg.order != "auto" else "layer" if streamer is not None and replayable else "cell"
    loads = None if streamer is None else streamer.layer_loads
    was_training = model.training
    model.eval()
    try:
        try:
            if order == "layer":
                base, losses, cost = layer_major(model, cache, chosen, experts, jobs, batches, cfg.buffer, on_step)
            else:
                base, losses, cost = _cell_by_cell(model, cache, chosen, experts, jobs, batches, cfg, on_step)
        except NotLayerMajor:
            if cfg.order == "layer":
                raise
            order = "cell"  # "auto": the residual cache replays every layer's own output, which is exact
            base, losses, cost = _cell_by_cell(model, cache, chosen, experts, jobs, batches, cfg, on_step)
    finally:
        model.train(was_training)
        cache.outputs.clear()
    delta = {m: {d: np.full((len(layers), len(experts), domains[d].shape[0]), np.nan) for d in domains}
             for m in cfg.modes}
    for (li, ei, mode), per in losses.items():
        for d, v in per.items():
            delta[mode][d][li, ei] = v - base[d]
    n_batches, n_dec = sum(len(c) for c in batches.values()), len(cache.layers)
    result = AblationResult(layers=layers, experts=experts, base=base, delta=delta, attribution=attr,
                            measured=cells, cost=cost, naive_cost=1.0 + len(jobs), level=cfg.level,
                            draws=cfg.draws, seed=cfg.seed, order=order)
    if streamer is not None:
        result.layer_loads = streamer.layer_loads - loads
        result.cell_layer_loads = n_batches * (n_dec + sum(n_dec - cache.layer_of(chosen[li]) for li, _, _ in jobs))
    for mode, per in delta.items():
        result.intervals[mode] = {}
        for d, v in per.items():
            iv = np.full((*v.shape[:2], 2), np.nan)
            for li, ei in cells:
                iv[li, ei] = bootstrap_interval(v[li, ei], cfg.level, draws=cfg.draws, seed=cfg.seed)
            result.intervals[mode][d] = iv
    return result
