r"""Expert ablation: what each expert does, measured by removing it.

For every MoE layer *l* and routed expert *e* (or the ones asked for), the change of next-token
loss on each domain's windows when *e* is taken out of *l*, with a bootstrap interval over windows
(the per-window differences are paired: the same window with and without the expert). Two modes,
named as in the literature:

* **re-route** (``"reroute"``): the expert's *selection* score is −∞, so the block chooses its
  top-k among the remaining experts with its own rule. The router's logit for *e* is set to −∞ on
  the first linear map inside the family's router module (the module the recorder hooks) whose
  output has E columns, and a selection bias (DeepSeek-V3, GLM-4-MoE, ...) for *e* is read as −∞
  in the forward (an edited copy, never written into the model, so that streamed and offloaded
  weights get it too), so that the corrected score that selects experts is −∞ too. Softmax routers
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

**Layer-major order** (layer-streamed models, :mod:`moescope.models.streaming`). There every forward
reads its decoder layers from disk, so cell by cell a whole map reads ≈ L·E·L/2 layers per batch.
Instead each decoder layer is read once per *pass* and every stream active at its depth goes through
it — the intact model's and each ablated cell's from its own layer on — with the cells chunked so
that the carried hidden states fit a buffer (``AblationConfig.buffer``, 1 GiB by default:
:data:`~moescope.models.streaming.DEFAULT_BUFFER`; :func:`ablate`, :func:`streams_per_pass`); no
residual cache is kept. One plain forward checks that the model's forward can be replayed so (it
passes nothing between layers but their outputs). The layer reads, measured, sit beside the
cell-by-cell count in :attr:`AblationResult.layer_loads` and :attr:`AblationResult.cell_layer_loads`.

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.analysis.router_rewrite import RouterRewriteError, rewriting_logits, saved
from moescope.models.layer_major import StandIn, StopForward, carrying_state
from moescope.models.sizes import parse_size
from moescope.models.streaming import DEFAULT_BUFFER, decoder_layers
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
    """Within the block: expert ``expert``'s selection score is −∞ (see the module docstring).

    The logit is −∞ in the router's linear map and, where the family has a selection bias, so is the
    bias *that the forward reads*: an edited copy replaces it inside the block's forward
    (:func:`~moescope.analysis.router_rewrite.rewriting_logits`), so the ablation is the same on a
    resident, a layer-streamed and an accelerate-offloaded model, and nothing in the model changes.
    """
    _check(view, expert)

    def mask(logits: Tensor) -> Tensor:
        logits[..., expert] = -math.inf
        return logits

    def drop(bias: Tensor) -> None:
        bias[expert] = -math.inf

    with rewriting_logits(view, mask, purpose="re-route ablation (use mode 'zero')", error=AblationError,
                          selection_bias=None if view.selection_bias is None else drop):
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


# --------------------------------------------------------------------------- layer-major passes

class _Streams:
    """Hidden states of the streams of a layer-major pass: ``kept[key]`` the output of the last decoder layer
    stream ``key`` ran, ``current`` the stream whose forward is running."""

    def __init__(self) -> None:
        self.kept: dict[object, object] = {}
        self.current: object = None


class _Carry(StandIn):
    """Stands in for a decoder layer below the running one: returns the current stream's kept output (a copy
    from the last stand-in, so that no layer ever receives the kept object itself)."""

    def __init__(self, layer: nn.Module, streams: _Streams, last: bool) -> None:
        super().__init__(layer)
        object.__setattr__(self, "_streams", streams)
        object.__setattr__(self, "_last", last)

    def forward(self, *args, **kwargs):
        streams = object.__getattribute__(self, "_streams")
        out = streams.kept[streams.current]
        return _clone(out) if object.__getattribute__(self, "_last") else out


@contextmanager
def _at_layer(layers: nn.ModuleList, streamer, layer: int, streams: _Streams) -> Iterator[None]:
    """Layers < ``layer`` replay the current stream's kept output; ``layer`` runs (held resident when streamed),
    its output is kept for the stream and the forward stops (:class:`StopForward`). With ``layer ==
    len(layers)`` every layer replays and the forward runs on to the logits."""
    originals = list(layers[:layer])
    handle = None
    if layer < len(layers):
        def keep(module, args, output):
            streams.kept[streams.current] = output
            raise StopForward

        handle = layers[layer].register_forward_hook(keep)
    hold = streamer.hold(layer) if streamer is not None and layer < len(layers) else nullcontext()
    try:
        with hold:
            for i, original in enumerate(originals):
                layers[i] = _Carry(original, streams, last=i == layer - 1)
            yield
    finally:
        if handle is not None:
            handle.remove()
        for i, original in enumerate(originals):
            layers[i] = original


def _embedding_width(model: nn.Module) -> tuple[int, int]:
    """(hidden size, bytes per value) of the residual stream, read from the input embedding."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else getattr(model, "wte", None)
    weight = getattr(embeddings, "weight", None)
    if not isinstance(weight, Tensor):
        raise AblationError(f"{type(model).__name__} has no input embedding to size the layer-major buffer from; "
                            "use order='cell'")
    return weight.shape[-1], weight.element_size()


def streams_per_pass(model: nn.Module, tokens: int, buffer: int | str | None) -> int:
    """Ablated streams C a layer-major pass carries beside the intact one: the largest C with
    (1 + C) · tokens · H · bytes ≤ ``buffer`` (None: :data:`~moescope.models.streaming.DEFAULT_BUFFER`), at
    least 1 even when one ablated stream alone exceeds it."""
    width, item = _embedding_width(model)
    budget = DEFAULT_BUFFER if buffer is None else parse_size(buffer)
    return max(1, budget // max(1, tokens * width * item) - 1)


def _step(model: nn.Module, ids: Tensor, head: bool, where: str) -> Tensor | None:
    """One cut-short forward of a layer-major round: None, or the (W,) losses in the head round."""
    try:
        logits = _forward_logits(model, ids)
    except StopForward:
        if head:
            raise
        return None
    if not head:
        raise AblationError(f"the forward did not reach {where}; this model cannot be ablated layer-major "
                            "(use order='cell')")
    return _per_window(logits, ids).double().cpu()


class _NotLayerMajor(AblationError):
    """The model's forward cannot be replayed layer-major (named in the message)."""


def _layer_major(model: nn.Module, cache: ResidualCache, chosen: list[MoELayerView], experts: list[int],
                 jobs: list[tuple[int, int, str]], batches: dict[str, list[Tensor]], cfg: AblationConfig,
                 on_step: Callable[[int, int], None] | None) -> tuple[dict, dict, float]:
    """What :func:`_cell_by_cell` returns, layer-major (see :func:`ablate`).

    Jobs are sorted by decoder layer and cut into passes of :func:`streams_per_pass`. In a pass, round
    l = 0..L − 1 runs layer l for every active stream and batch: first the jobs starting at l (from the
    intact stream's output of layer l − 1, the intervention on), then those started below (no
    intervention: it acts inside its own layer only), then the intact stream, which runs every layer in
    the first pass and, in later ones, only those below the pass's highest starting layer. Round L replays
    every layer and runs the final norm and head for the losses.

    A stand-in replays only a stream's last layer output, so a model whose forward carries other state
    from layer to layer (Inkling-2 keeps the hidden states at block boundaries and feeds them to later
    layers and the head) would be computed wrongly. A plain forward of the first batch (one more read of
    every layer, one more forward in ``cost``) must therefore give the intact losses the first pass gives;
    if not, :class:`_NotLayerMajor` is raised before any cell is reported.
    """
    layers, n_dec = cache.layers, len(cache.layers)
    streamer = getattr(model, "moescope_streamer", None)
    flat = [(d, b, chunk) for d, chunks in batches.items() for b, chunk in enumerate(chunks)]
    start = {job: cache.layer_of(chosen[job[0]]) for job in jobs}
    ordered = sorted(jobs, key=start.__getitem__)
    per_pass = streams_per_pass(model, sum(chunk.numel() for *_, chunk in flat), cfg.buffer)
    passes = [ordered[i:i + per_pass] for i in range(0, len(ordered), per_pass)] or [[]]
    streams = _Streams()
    base_parts: dict[tuple[str, int], Tensor] = {}
    parts: dict[tuple, Tensor] = {}
    cost, done = 2.0, 0  # the plain forward of the check, and the intact stream of the first pass
    first = flat[0]
    plain = window_losses(model, first[2])
    with torch.no_grad():
        for p, group in enumerate(passes):
            top = n_dec if p == 0 else max(start[j] for j in group)  # the intact stream runs layers < top
            cost += sum((n_dec - start[j]) / n_dec for j in group) + (top / n_dec if p else 0.0)
            streams.kept.clear()
            for layer in range(n_dec + 1):
                head = layer == n_dec
                where = f"decoder layer {layer} ({cache.path}.{layer})"
                running = sorted((j for j in group if start[j] <= layer), key=lambda j: start[j] != layer)
                with _at_layer(layers, streamer, layer, streams):
                    for job in running:
                        li, ei, mode = job
                        fresh = start[job] == layer
                        for d, b, chunk in flat:
                            key = (job, d, b)
                            if fresh and layer > 0:
                                streams.kept[key] = streams.kept[("base", d, b)]
                            streams.current = key
                            with INTERVENTIONS[mode](chosen[li], experts[ei]) if fresh else nullcontext():
                                out = _step(model, chunk, head, where)
                            if head:
                                parts[key] = out
                    if layer < top or (head and p == 0):
                        for d, b, chunk in flat:
                            streams.current = ("base", d, b)
                            out = _step(model, chunk, head, where)
                            if head:
                                base_parts[(d, b)] = out
                if not head and layer >= top:
                    for d, b, _ in flat:  # no job of this pass starts above: the intact stream is done
                        streams.kept.pop(("base", d, b), None)
            streams.kept.clear()
            if p == 0 and not torch.allclose(base_parts[first[:2]], plain, rtol=1e-3, atol=1e-5):
                raise _NotLayerMajor(
                    f"{type(model).__name__}: run layer-major, the intact model's losses of the first batch "
                    f"({base_parts[first[:2]].numpy().round(4).tolist()}) differ from a plain forward's "
                    f"({plain.numpy().round(4).tolist()}): its forward carries state between decoder layers "
                    "besides their outputs, which layer-major replay does not keep; use order='cell'")
            for _ in group:
                done += 1
                if on_step is not None:
                    on_step(done, len(jobs))
    base = {d: torch.cat([base_parts[(d, b)] for b in range(len(chunks))]).numpy() for d, chunks in batches.items()}
    losses = {job: {d: torch.cat([parts[(job, d, b)] for b in range(len(chunks))]).numpy()
                    for d, chunks in batches.items()} for job in jobs}
    return base, losses, cost


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
    ids = ids.to(_input_device(model))
    return (model(input_ids=ids) if hf else model(ids)).logits


def _input_device(model: nn.Module) -> torch.device:
    """Where token ids go: the first resident parameter's device. An accelerate-offloaded embedding is a
    ``meta`` tensor between forwards (ids cannot be moved there); accelerate's hooks move the ids on to the
    execution device themselves."""
    return next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))


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
    # check in _layer_major still guards a family the registry does not know to carry state
    replayable = not carrying_state(chosen)
    order = cfg.order if cfg.order != "auto" else "layer" if streamer is not None and replayable else "cell"
    loads = None if streamer is None else streamer.layer_loads
    was_training = model.training
    model.eval()
    try:
        try:
            run = _layer_major if order == "layer" else _cell_by_cell
            base, losses, cost = run(model, cache, chosen, experts, jobs, batches, cfg, on_step)
        except _NotLayerMajor:
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
