r"""Layer-major forwards: every batch through decoder layer *l* before any batch reaches layer *l + 1*.

A model whose decoder layers stream from disk (:mod:`moescope.models.streaming`) reads every layer
again on every forward: N batches cost N reads of the whole checkpoint. Run layer-major instead and
each layer is read once for all N batches:

.. code-block:: text

    for l in layers:                       # layer l resident (read once)
        for b in batches:                  # the model's own forward, cut short:
            layers < l  -> replay b's output of layer l - 1 (kept from the last round)
            layer  l    -> runs; its output replaces b's entry; the forward stops here

**The model's own forward does the bookkeeping.** Each round calls the model exactly as a caller
would (``forward(b)``), so everything a family computes before and between its layers — embeddings,
rotary tables, causal or sliding-window masks per layer type, per-layer inputs — is computed by the
family's own code, not re-implemented here. The layers below *l* are replaced by stand-ins that
return what layer *l − 1* returned for this batch (in whatever form the family's layers return it:
a tensor or a tuple), so layer *l* receives exactly the input it had in a plain forward; a forward
hook on layer *l* keeps its output and raises :class:`StopForward`, so nothing above layer *l* (nor
the head) runs. Routing hooks inside layer *l* fire as in a plain forward;
:class:`~moescope.models.recorder.RoutingRecorder` keeps the records of a forward that ended with
:class:`StopForward`.

**The residual stream is the buffer.** What is kept between rounds is one hidden state per batch:
the residual stream at the input of the next layer (``hidden_bytes`` says its size), the same
cache the ablation map starts its interventions from (:mod:`moescope.analysis.residual_replay`).

Cost: L rounds of N cut-short forwards; the stand-ins cost nothing, the prologue (embedding lookup,
masks) is paid L times per batch instead of once, which is small beside a decoder layer. Results
equal a plain batch-by-batch forward (``tests/models/test_layer_major.py`` checks every family).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from moescope.models.view import MoELayerView

__all__ = ["LayerMajor", "StandIn", "StopForward", "carrying_state"]


def carrying_state(views: Sequence[MoELayerView]) -> list[str]:
    """The families among ``views`` whose forward carries state between decoder layers besides their outputs
    (``Family.replayable`` false): a layer-major run cannot replay them."""
    from moescope.models.families import BY_NAME

    return sorted({v.family for v in views if v.family in BY_NAME and not BY_NAME[v.family].replayable})


class StopForward(Exception):
    """Raised by a forward hook to end a model's forward once the layers of interest have run."""


class StandIn(nn.Module):
    """Takes a decoder layer's place in its list without running it: subclasses say what ``forward`` returns.
    Attributes the model's loop reads from its layers (``attention_type``, ...) come from the layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: its weights stay out of this module

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)


class _Replay(StandIn):
    """Stands in for decoder layers below the running one: returns the batch's kept hidden state."""

    def __init__(self, layer: nn.Module, runner: LayerMajor) -> None:
        super().__init__(layer)
        object.__setattr__(self, "_runner", runner)

    def forward(self, *args, **kwargs):
        runner = object.__getattribute__(self, "_runner")
        return runner.kept[runner.batch]


def _nbytes(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(o) for o in out)
    return 0


class LayerMajor:
    """Runs ``forward(b)`` for batches ``b = 0..n-1`` one decoder layer at a time.

    Args:
        model: a Hugging Face model (in memory or layer-streamed); ``forward(b)`` must call it.
        views: its MoE layer views (they locate the decoder-layer list,
            :func:`~moescope.models.streaming.decoder_layers`).

    ``model.moescope_streamer`` (a streamed model) is asked to hold layer *l* resident for the whole
    round, so it is read once per :meth:`run`.
    """

    def __init__(self, model: nn.Module, views: list[MoELayerView]) -> None:
        from moescope.models.families import BY_NAME
        from moescope.models.streaming import decoder_layers

        carries = carrying_state(views)
        if carries:
            raise ValueError(f"{', '.join(BY_NAME[f].title for f in carries)} carries state from one decoder layer to "
                             "the next besides its output, so its layers cannot be replayed layer-major; run it "
                             "batch by batch")
        self.model = model
        self.path, self.layers = decoder_layers(model, views)
        self.streamer = getattr(model, "moescope_streamer", None)
        self.kept: list = []
        self.batch = 0
        self.hidden_bytes = 0  # the largest the kept residual stream grew to in the last run

    def layer_of(self, view: MoELayerView) -> int:
        """The decoder-layer index holding ``view``'s block."""
        return int(view.name[len(self.path) + 1:].split(".")[0])

    def run(self, n: int, forward: Callable[[int], None], *, layers: Sequence[int] | None = None,
            on_round: Callable[[int, int], None] | None = None) -> None:
        """Call ``forward(b)`` for ``b`` in ``range(n)`` once per decoder layer, layer-major.

        Args:
            n: batches.
            forward: runs the model's forward on batch ``b`` (set up recorders around it as for a
                plain forward); it may raise :class:`StopForward` out of the model, which is caught.
            layers: stop after the last of these decoder layers (default: every layer).
            on_round: called with ``(layer, batch)`` after each cut-short forward (progress).
        """
        if n < 1:
            raise ValueError(f"layer-major needs at least one batch; got n={n}")
        last = len(self.layers) - 1 if layers is None or not len(layers) else max(layers)
        if not 0 <= last < len(self.layers):
            raise ValueError(f"decoder layer {last} does not exist; {self.path!r} has layers 0..{len(self.layers) - 1}")
        self.kept = [None] * n
        self.hidden_bytes = 0
        try:
            for layer in range(last + 1):
                with self._round(layer):
                    for b in range(n):
                        self.batch = b
                        try:
                            forward(b)
                        except StopForward:
                            pass
                        else:
                            raise RuntimeError(f"the forward of batch {b} did not reach decoder layer {layer} "
                                               f"({self.path}.{layer}); cannot run it layer-major")
                        if on_round is not None:
                            on_round(layer, b)
                self.hidden_bytes = max(self.hidden_bytes, sum(_nbytes(k) for k in self.kept))
        finally:
            self.kept = []

    @contextlib.contextmanager
    def _round(self, layer: int) -> Iterator[None]:
        """Layers below ``layer`` replay, ``layer`` runs (held resident), its output is kept, the forward stops."""
        originals = [self.layers[i] for i in range(layer)]

        def keep(module, args, output):
            self.kept[self.batch] = output
            raise StopForward

        handle = self.layers[layer].register_forward_hook(keep)
        hold = self.streamer.hold(layer) if self.streamer is not None else contextlib.nullcontext()
        try:
            with hold:
                for i, original in enumerate(originals):
                    self.layers[i] = _Replay(original, self)
                yield
        finally:
            handle.remove()
            for i, original in enumerate(originals):
                self.layers[i] = original
