r"""Replaying the residual stream, so that ablating decoder layer *l* re-runs only the layers ≥ *l*.

**Cost.** A decoder layer's output does not depend on the layers above it, so the residual stream
is cached at every decoder layer's input on the unablated pass (:class:`ResidualCache`), and
ablating layer *l* re-runs only the layers ≥ *l*: the map costs Σₗ E·(L − l)/L forward-pass
equivalents instead of the naive L·E + 1 (counted in :attr:`~moescope.analysis.ablation.AblationResult.cost`).
The cache holds every decoder layer's output for every window: (L, windows, T, H) values.

**Layer-major order** (layer-streamed models, :mod:`moescope.models.streaming`). There every forward
reads its decoder layers from disk, so cell by cell a whole map reads ≈ L·E·L/2 layers per batch.
Instead each decoder layer is read once per *pass* and every stream active at its depth goes through
it — the intact model's and each ablated cell's from its own layer on — with the cells chunked so
that the carried hidden states fit a buffer (``AblationConfig.buffer``, 1 GiB by default:
:data:`~moescope.models.streaming.DEFAULT_BUFFER`; :func:`~moescope.analysis.ablation.ablate`,
:func:`streams_per_pass`); no residual cache is kept. One plain forward checks that the model's forward
can be replayed so (it passes nothing between layers but their outputs). The layer reads, measured, sit
beside the cell-by-cell count in :attr:`~moescope.analysis.ablation.AblationResult.layer_loads` and
:attr:`~moescope.analysis.ablation.AblationResult.cell_layer_loads`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn

from moescope.analysis.interventions import INTERVENTIONS
from moescope.analysis.window_loss import AblationError, forward_logits, per_window, window_losses
from moescope.models.layer_major import StandIn, StopForward
from moescope.models.sizes import parse_size
from moescope.models.streaming import DEFAULT_BUFFER, decoder_layers
from moescope.models.view import MoELayerView

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
        logits = forward_logits(model, ids)
    except StopForward:
        if head:
            raise
        return None
    if not head:
        raise AblationError(f"the forward did not reach {where}; this model cannot be ablated layer-major "
                            "(use order='cell')")
    return per_window(logits, ids).double().cpu()


class NotLayerMajor(AblationError):
    """The model's forward cannot be replayed layer-major (named in the message)."""


def layer_major(model: nn.Module, cache: ResidualCache, chosen: list[MoELayerView], experts: list[int],
                jobs: list[tuple[int, int, str]], batches: dict[str, list[Tensor]], buffer: int | str | None,
                on_step: Callable[[int, int], None] | None) -> tuple[dict, dict, float]:
    """What :func:`~moescope.analysis.ablation._cell_by_cell` returns, layer-major
    (see :func:`~moescope.analysis.ablation.ablate`), carrying at most ``buffer`` bytes of hidden states
    (None: :data:`~moescope.models.streaming.DEFAULT_BUFFER`).

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
    if not, :class:`NotLayerMajor` is raised before any cell is reported.
    """
    layers, n_dec = cache.layers, len(cache.layers)
    streamer = getattr(model, "moescope_streamer", None)
    flat = [(d, b, chunk) for d, chunks in batches.items() for b, chunk in enumerate(chunks)]
    start = {job: cache.layer_of(chosen[job[0]]) for job in jobs}
    ordered = sorted(jobs, key=start.__getitem__)
    per_pass = streams_per_pass(model, sum(chunk.numel() for *_, chunk in flat), buffer)
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
                raise NotLayerMajor(
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

