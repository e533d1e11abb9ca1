r"""Expert ablation: what each expert does, measured by removing it.

For every MoE layer *l* and routed expert *e* (or the ones asked for), the change of next-token
loss on each domain's windows when *e* is taken out of *l*, with a bootstrap interval over windows
(the per-window differences are paired: the same window with and without the expert). Two modes,
named as in the literature:

* **re-route** (``"reroute"``): the expert's *selection* score is −∞, so the block chooses its
  top-k among the remaining experts with its own rule. The router's logit for *e* is set to −∞ on
  the first linear map inside the family's router module (the module the recorder hooks) whose
  output has E columns, and a selection bias (DeepSeek-V3, GLM-4-MoE, ...) for *e* is set to −∞
  for the forward, so that the corrected score that selects experts is −∞ too. Softmax routers
  then renormalise over the others exactly as the family does with a −∞ logit. With group-limited
  selection (DeepSeek-V3's n_group) a −∞ score can drop the expert's whole group when its group
  score sums that expert (groups of two): the family's own rule, applied as written.
* **zero** (``"zero"``): the expert's weighted output is removed and nothing else changes (the
  other experts keep their combine weights): its down projection (and a down bias, GPT-OSS) is
  zero for the forward.

**Cost.** A decoder layer's output does not depend on the layers above it, so the residual stream
is cached at every decoder layer's input on the unablated pass (:class:`ResidualCache`), and
ablating layer *l* re-runs only the layers ≥ *l*: the map costs Σₗ E·(L − l)/L forward-pass
equivalents instead of the naive L·E + 1 (counted in :attr:`AblationResult.cost`). The cache
holds every decoder layer's output for every window: (L, windows, T, H) values.

**Attribution.** Scaling expert e's output by α, removing it is α: 1 → 0; to first order the zero-mode
change is −∂L/∂α = −⟨∂L/∂W_down, W_down⟩ (plus the down bias's term), so one forward and one backward
estimate every cell at once (:func:`attribution`). ``AblationConfig.exact`` decides which cells are
also measured exactly: all of them up to ``exact_limit`` (256), otherwise the ``top`` 16 per domain by
attribution. Removing a trained expert is far from infinitesimal; the rank agreement of the two is
reported (:meth:`AblationResult.rank_agreement`), not assumed.

Encoder–decoder checkpoints (Switch Transformers) are refused: their loss is span corruption,
which needs a masking recipe this module does not define.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.analysis.router_rewrite import RouterRewriteError, rewriting_logits, saved
from moescope.models.layer_major import StandIn
from moescope.models.streaming import decoder_layers
from moescope.models.view import MoELayerView
from moescope.stats import DEFAULT_LEVEL, bootstrap_interval

MODES = ("reroute", "zero")


class AblationError(RouterRewriteError):
    """A model, layer or expert that cannot be ablated as asked (named in the message)."""


# --------------------------------------------------------------------------- interventions

def _named_tensor(module: nn.Module, t: Tensor) -> str | None:
    """The name of ``module``'s parameter or buffer that ``t`` is (or views into), or None."""
    ptr = t.untyped_storage().data_ptr()
    for name, p in [*module.named_parameters(), *module.named_buffers()]:
        if p.device == t.device and p.untyped_storage().data_ptr() == ptr:
            return name
    return None


@contextmanager
def reroute(view: MoELayerView, expert: int) -> Iterator[None]:
    """Within the block: expert ``expert``'s selection score is −∞ (see the module docstring)."""
    _check(view, expert)

    def mask(logits: Tensor) -> Tensor:
        logits[..., expert] = -math.inf
        return logits

    with ExitStack() as stack:
        if view.selection_bias is not None:
            bias = view.selection_bias
            stack.enter_context(saved(bias))
            with torch.no_grad():
                bias[expert] = -math.inf
        stack.enter_context(rewriting_logits(view, mask, purpose="re-route ablation (use mode 'zero')",
                                             error=AblationError))
        yield


def _output_parts(view: MoELayerView, expert: int) -> list[tuple[nn.Parameter, Tensor]]:
    """Expert ``expert``'s output-side tensors: ``(parameter, the expert's view of it)`` for its down
    projection and, where the family has one, its down bias (GPT-OSS ``down_proj_bias``)."""
    _check(view, expert)
    down = view.expert(expert).down
    name = _named_tensor(view.module, down)
    if name is None:
        raise AblationError(f"{view.name}: expert {expert}'s down projection is not stored in a parameter of the "
                            f"{view.family} block (a converted or quantised copy?); it cannot be zeroed")
    owner = dict(view.module.named_parameters())
    parts = [(owner[name], down)]
    stem = name[: -len("weight")] + "bias" if name.endswith("weight") else name + "_bias"
    bias = owner.get(stem)
    if bias is not None:
        stacked = owner[name].dim() == 3 and bias.dim() == 2 and bias.shape[0] == view.num_experts
        parts.append((bias, bias.detach()[expert] if stacked else bias.detach()))
    return parts


@contextmanager
def zero(view: MoELayerView, expert: int) -> Iterator[None]:
    """Within the block: expert ``expert``'s down projection (and down bias) are zero."""
    targets = [v for _, v in _output_parts(view, expert)]
    with saved(*targets):
        with torch.no_grad():
            for t in targets:
                t.zero_()
        yield


INTERVENTIONS: dict[str, Callable[[MoELayerView, int], object]] = {"reroute": reroute, "zero": zero}


def _check(view: MoELayerView, expert: int) -> None:
    if view.module is None:
        raise AblationError(f"{view.name}: a view read from disk has no live module to ablate")
    if not isinstance(expert, int) or isinstance(expert, bool) or not 0 <= expert < view.num_experts:
        raise AblationError(f"{view.name}: expert must be an int in [0, {view.num_experts}); got {expert!r}")


# --------------------------------------------------------------------------- residual cache

class _Replay(StandIn):
    """Stands in for a decoder layer: returns the layer's cached output for the current batch."""

    def __init__(self, layer: nn.Module, cache: ResidualCache, index: int) -> None:
        super().__init__(layer)
        self._cache, self._index = cache, index

    def forward(self, *args, **kwargs):
        return _clone(self._cache.outputs[self._cache.batch][self._index])


def _clone(out):
    if isinstance(out, Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone(o) for o in out)
    return out


class ResidualCache:
    """Every decoder layer's output per batch, so a forward can start at layer *l*.

    ``with cache.recording(key):`` runs the model normally and keeps each layer's output under
    ``key``; ``with cache.starting_at(l, key):`` replaces layers ``< l`` by their cached outputs.
    """

    def __init__(self, model: nn.Module, views: list[MoELayerView]) -> None:
        self.path, self.layers = decoder_layers(model, views)
        self.outputs: dict[object, list] = {}
        self.batch: object = None

    def layer_of(self, view: MoELayerView) -> int:
        """The decoder-layer index holding ``view``'s block."""
        return int(view.name[len(self.path) + 1:].split(".")[0])

    @contextmanager
    def recording(self, key: object) -> Iterator[None]:
        outs: list = [None] * len(self.layers)

        def keep(i):
            def hook(module, args, output):
                outs[i] = _clone(output)
            return hook

        handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(self.layers)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if any(o is None for o in outs):
            raise AblationError(f"not every decoder layer under {self.path!r} ran in the forward; cannot cache "
                                "the residual stream")
        self.outputs[key] = outs

    @contextmanager
    def starting_at(self, layer: int, key: object) -> Iterator[None]:
        originals = [self.layers[i] for i in range(layer)]
        self.batch = key
        try:
            for i in range(layer):
                self.layers[i] = _Replay(originals[i], self, i)
            yield
        finally:
            for i, m in enumerate(originals):
                self.layers[i] = m
            self.batch = None


# --------------------------------------------------------------------------- losses

def _check_vocab(vocab: int, ids: Tensor) -> None:
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise AblationError(f"token ids must lie in [0, {vocab}) (the model's vocabulary); got ids in "
                            f"[{int(ids.min())}, {int(ids.max())}] — a tokenizer of another model?")


def _forward_logits(model: nn.Module, ids: Tensor) -> Tensor:
    """(W, T, V) logits of a Hugging Face causal LM (``input_ids=``) or a moescope ``TinyLM`` (positional)."""
    hf = hasattr(model, "get_input_embeddings")
    embeddings = model.get_input_embeddings() if hf else getattr(model, "wte", None)
    if isinstance(embeddings, nn.Embedding):
        _check_vocab(embeddings.num_embeddings, ids)  # before the lookup fails with a bare IndexError
    ids = ids.to(next(model.parameters()).device)
    return (model(input_ids=ids) if hf else model(ids)).logits


def _per_window(logits: Tensor, ids: Tensor) -> Tensor:
    """(W,) mean next-token cross entropy of each window, in float32 or wider."""
    _check_vocab(logits.shape[-1], ids)
    ids = ids.to(logits.device)
    wide = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    loss = F.cross_entropy(wide.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return loss.view(ids.shape[0], -1).mean(dim=1)


def window_losses(model: nn.Module, ids: Tensor) -> Tensor:
    """(W,) float64 mean next-token cross entropy of each window of ``ids`` (W, T)."""
    with torch.no_grad():
        logits = _forward_logits(model, ids)                                  # (W, T, V)
    return _per_window(logits, ids).double().cpu()


def attribution(model: nn.Module, views: list[MoELayerView], experts: list[int], ids: Tensor,
                batch_size: int) -> np.ndarray:
    """First-order estimate of the zero-mode loss change of every (view, expert): (len(views), len(experts)).

    Scaling expert e's output by α, its removal is α: 1 → 0, so to first order
    Δloss ≈ −∂L/∂α = −⟨∂L/∂W, W⟩ − ⟨∂L/∂b, b⟩ over its down projection W and down bias b, with L the
    mean over ``ids``' windows of their mean token loss. One forward and one backward per batch give
    every expert of every layer at once (gradient × the expert's contribution).
    """
    parts = {(li, ei): _output_parts(v, e) for li, v in enumerate(views) for ei, e in enumerate(experts)}
    params = {id(p): p for plist in parts.values() for p, _ in plist}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in params)
            p.grad = None
        with torch.enable_grad():
            for chunk in ids.split(batch_size):
                logits = _forward_logits(model, chunk)
                (_per_window(logits, chunk).sum() / ids.shape[0]).backward()
        out = np.zeros((len(views), len(experts)))
        for (li, ei), plist in parts.items():
            total = 0.0
            for p, v in plist:
                if p.grad is None:  # the expert never ran on these windows: no gradient reached it
                    continue
                if p.grad.stride() != p.stride():
                    raise AblationError(f"{views[li].name}: the gradient of {tuple(p.shape)} has another memory "
                                        "layout than the weight; cannot read one expert's share")
                g = p.grad.as_strided(v.shape, v.stride(), v.storage_offset() - p.storage_offset())
                total += float((g.double() * v.double()).sum())
            out[li, ei] = -total
        return out
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(flags[id(p)])
        model.train(was_training)


# --------------------------------------------------------------------------- the map

EXACT = ("auto", "all")


@dataclass(frozen=True)
class AblationConfig:
    """What :func:`ablate` measures.

    ``exact``: ``"all"`` measures every selected (layer, expert) exactly; ``"auto"`` does so when
    there are at most ``exact_limit`` of them, and otherwise measures exactly the ``top`` experts of
    each domain by first-order attribution (which is computed for every cell in both cases).
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

    def __post_init__(self) -> None:
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
    equivalents spent on exact ablations (the intact pass included) and ``naive_cost`` what whole
    forwards would have cost for the same cells.
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


def ablate(model: nn.Module, views: list[MoELayerView], domains: dict[str, Tensor],
           cfg: AblationConfig = AblationConfig(), *, on_step: Callable[[int, int], None] | None = None
           ) -> AblationResult:
    """The loss change of the selected (layer, expert) cells per domain and mode.

    Args:
        model: a live causal LM whose forward takes ``input_ids`` and returns ``.logits``.
        views: its MoE layers (:func:`~moescope.models.adapters.find_moe_layers`).
        domains: name -> (W, T) int64 token windows (W ≥ 1, T ≥ 2), no padding.
        on_step: ``on_step(done, total)`` after each exactly ablated (layer, expert, mode).
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
    base = {}
    was_training = model.training
    model.eval()
    try:
        for d, chunks in batches.items():
            parts = []
            for b, chunk in enumerate(chunks):
                with cache.recording((d, b)):
                    parts.append(window_losses(model, chunk))
            base[d] = torch.cat(parts).numpy()
        delta = {m: {d: np.full((len(layers), len(experts), domains[d].shape[0]), np.nan) for d in domains}
                 for m in cfg.modes}
        total, done, cost = len(cells) * len(cfg.modes), 0, 0.0
        for li, ei in cells:
            view, e = chosen[li], experts[ei]
            start = cache.layer_of(view)
            for mode in cfg.modes:
                for d, chunks in batches.items():
                    parts = []
                    for b, chunk in enumerate(chunks):
                        with cache.starting_at(start, (d, b)), INTERVENTIONS[mode](view, e):
                            parts.append(window_losses(model, chunk))
                    delta[mode][d][li, ei] = torch.cat(parts).numpy() - base[d]
                cost += (n_dec - start) / n_dec
                done += 1
                if on_step is not None:
                    on_step(done, total)
    finally:
        model.train(was_training)
        cache.outputs.clear()
    result = AblationResult(layers=layers, experts=experts, base=base, delta=delta, attribution=attr,
                            measured=cells, cost=1.0 + cost, naive_cost=1.0 + total, level=cfg.level,
                            draws=cfg.draws, seed=cfg.seed)
    for mode, per in delta.items():
        result.intervals[mode] = {}
        for d, v in per.items():
            iv = np.full((*v.shape[:2], 2), np.nan)
            for li, ei in cells:
                iv[li, ei] = bootstrap_interval(v[li, ei], cfg.level, draws=cfg.draws, seed=cfg.seed)
            result.intervals[mode][d] = iv
    return result
