"""Record what every MoE layer of a live model actually did, one forward pass at a time.

``RoutingRecorder(model, views)`` is a context manager that attaches forward hooks and turns
each forward pass into one :class:`~moescope.models.view.RoutingRecord` per MoE layer:

.. code-block:: python

    model, tokenizer, views = load_moe_model(path)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with RoutingRecorder(model, views) as rec:
        model(**batch)                      # input_ids and attention_mask are captured
        for record in rec.pop():
            stats.update(record)

**The choices are read, never re-derived.** Every router in transformers 5.x returns the
experts it chose, and the block hands exactly those to its experts; the recorder hooks the
*router submodule* and reads its returned indices and weights. Re-deriving them from
``router_logits`` would be wrong for DeepSeek-V3 (a selection bias and group limits change
the choice), Switch (capacity drops tokens), PhiMoE (sparsemixer's threshold) and in general
across versions, where the meaning of ``router_logits`` changed. Which submodule is hooked and
how its output is read is each family's ``hook`` and ``reader``
(:class:`~moescope.models.family.Family`, one file per family in :mod:`moescope.models.families`;
the readers, shared by families whose routers return the same thing, are in
:mod:`moescope.models.readers`): most routers return ``(logits, weights (T, k), indices (T, k))``;
Llama 4's returns scores whose non-zero entries are the chosen experts; Switch's a
capacity-masked one-hot in which a dropped token has no 1 (index -1, weight 0); moescope's own
layers return a ``MoEOutput`` whose ``routing`` is read.

Each token's (index, weight) pairs are sorted by weight, descending (stable), so column 0
is the expert with the largest combine weight; -1 slots go last. (PhiMoE: sparsemixer's two
multipliers are each a softmax over a different masked set, so the larger one need not
belong to its first pick, the top logit.) ``scores`` (T, E) is the
full distribution: the softmax of the logits for softmax routers (GPT-OSS: of the biased
logits), the sigmoid for sigmoid routers (DeepSeek-V3: *without* the selection bias, as the
combine weights use it; Llama 4), and for soft routing the per-expert combine mass of
moescope's ``SoftMoELayer``. Where a sigmoid family's top-k ranks the router *logits* (Llama 4,
Kolibri-1 — which adds its selection bias to them — and Cohere2-MoE; the family's
``selection_logits``), the record also keeps those logits as ``selection``
(:meth:`~moescope.models.view.RoutingRecord.ranked`), so that margins are taken on what was ranked.

.. warning:: Llama 4 caveat. A chosen expert whose score underflows to exactly 0 cannot be
   told from an unchosen one: sigmoid(l) is 0 in float32 (and bfloat16) for l below about
   -104 (-92 in bfloat16), in float16 below about -17. Such an expert contributes
   ``expert(0 · x) = 0`` to the output, so it was not used in any measurable sense; the
   recorder marks its slot -1 and the count of valid choices falls below T·k.

**Batch, mask and token ids.** ``batch_shape`` (B, S) comes from the shape of the block's
input (a forward pre-hook on the block). The attention mask and input ids come, in order of
precedence, from :meth:`RoutingRecorder.set_batch` (applies to the next forward of
``model``, or to blocks called directly), else from the model's own forward arguments
(``input_ids`` / ``attention_mask``, keyword or the first two positional; a pre-hook on
``model``), and for a moescope layer from the ``attention_mask`` it was called with. When the
mask is longer than S (generation with a KV cache) its last S columns are used; a mask or
ids of any other shape are not applied (all tokens real, ids None), which is what happens
for the decoder layers of an encoder–decoder model.

**Passes.** A pass starts when ``model``'s forward starts and ends when it returns; the
records of the last finished pass are :attr:`RoutingRecorder.records` (``pop`` takes them),
and ``on_pass`` is called with each pass's records (use it under ``generate``). Blocks called
directly, without ``model``, form a pass that ends when a layer fires a second time or the
records are read. While a pass runs, captures stay on the model's device; they are moved to
the CPU (float32 / int64, detached) once per pass. Hooks are removed on exit, exceptions
included. A forward ended on purpose by :class:`~moescope.models.layer_major.StopForward` (a
layer-major run) is a finished pass: the layers that ran are recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from moescope.models.adapters import find_moe_layers
from moescope.models.families import BY_NAME
from moescope.models.family import Reader
from moescope.models.layer_major import StopForward
from moescope.models.view import MoELayerView, RoutingRecord


def sort_by_weight(indices: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's (index, weight) pairs by weight, descending and stable; -1 slots last."""
    if indices.shape[-1] < 2:
        return indices, weights
    key = weights.float().masked_fill(indices < 0, float("-inf"))
    order = key.argsort(dim=-1, descending=True, stable=True)
    return indices.gather(-1, order), weights.gather(-1, order)


# -- the recorder --------------------------------------------------------------------------------
@dataclass
class _Capture:
    """One layer's raw capture during a pass, still on the model's device."""

    indices: Tensor
    weights: Tensor
    scores: Tensor
    lead: tuple[int, ...]              # the block input's leading shape
    own_mask: Tensor | None            # the attention_mask a moescope layer was called with
    selection: Tensor | None = None    # the router logits, where the family's top-k ranks them


def first_tensor(args: tuple, kwargs: dict) -> Tensor | None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor):
            return v
    return None


def _batch_from_call(args: tuple, kwargs: dict) -> tuple[Tensor | None, Tensor | None]:
    """``input_ids`` and ``attention_mask`` of a model call (keywords, else the first two positionals)."""
    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    if ids is None and args and isinstance(args[0], Tensor) and not args[0].is_floating_point():
        ids = args[0]
    if mask is None and len(args) > 1 and isinstance(args[1], Tensor):
        mask = args[1]
    return ids, mask


class RoutingRecorder:
    """Hooks on ``model`` and its MoE layers that record one RoutingRecord per layer and pass.

    Args:
        model: the live model (its forward delimits a pass and carries the batch).
        views: the layers to record (default: :func:`find_moe_layers` of ``model``); each
            needs its live ``module``.
        on_pass: called with the list of records of every finished pass.
    """

    def __init__(self, model: nn.Module, views: list[MoELayerView] | None = None, *,
                 on_pass: Callable[[list[RoutingRecord]], None] | None = None) -> None:
        self.model = model
        self.views = list(find_moe_layers(model) if views is None else views)
        for v in self.views:
            if v.module is None:
                raise ValueError(f"view {v.name!r} has no live module (read from disk?); cannot record it")
            if v.family not in BY_NAME:
                raise ValueError(f"no routing reader for family {v.family!r}; known: {', '.join(BY_NAME)}")
        self.on_pass = on_pass
        self._handles: list[RemovableHandle] = []
        self._pending: dict[int, _Capture] = {}
        self._pending_batch: tuple[Tensor | None, Tensor | None] = (None, None)
        self._explicit: tuple[Tensor | None, Tensor | None] | None = None
        self._in_model = False
        self._lead: dict[int, tuple[tuple[int, ...], Tensor | None]] = {}
        self._last: list[RoutingRecord] = []

    # -- public ---------------------------------------------------------------------------------
    def __enter__(self) -> RoutingRecorder:
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._detach()

    def set_batch(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> None:
        """Token ids (B, S) and attention mask (B, S | B, past + S; 1 = real) of the next pass.

        Takes precedence over what the model's forward is called with.
        """
        for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if t is not None and (not isinstance(t, Tensor) or t.dim() != 2):
                raise ValueError(f"{name} must be a 2-D (batch, sequence) tensor; got "
                                 f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        self._explicit = (input_ids, attention_mask)

    @property
    def records(self) -> list[RoutingRecord]:
        """The records of the last finished pass, one per recorded layer, by layer index."""
        if self._pending:
            self._finish()
        return list(self._last)

    def pop(self) -> list[RoutingRecord]:
        """The last pass's records, forgetting them."""
        out = self.records
        self._last = []
        return out

    # -- hooks ----------------------------------------------------------------------------------
    def _attach(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(self._model_pre, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._model_post, always_call=True))
        for view in self.views:
            family = BY_NAME[view.family]
            target = view.module.get_submodule(family.hook) if family.hook else view.module
            self._handles.append(view.module.register_forward_pre_hook(self._block_pre(view), with_kwargs=True))
            logits = family.selection_logits if family.ranks_logits(view.scoring) else None
            self._handles.append(target.register_forward_hook(self._capture(view, family.reader, logits)))

    def _detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _model_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._pending and not self._in_model:  # blocks called directly before: their pass ends
            self._finish()
        self._in_model = True
        if self._explicit is not None:
            self._pending_batch, self._explicit = self._explicit, None
        else:
            self._pending_batch = _batch_from_call(args, kwargs)

    def _model_post(self, module: nn.Module, args: tuple, output) -> None:
        self._in_model = False
        if output is None and not isinstance(sys.exc_info()[1], StopForward):
            # the forward raised (an always_call hook sees the exception being handled): drop the pass
            self._pending.clear()
            self._pending_batch = (None, None)
        elif self._pending:
            self._finish()

    def _block_pre(self, view: MoELayerView):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = first_tensor(args, kwargs)
            lead = tuple(x.shape[:-1]) if x is not None else ()
            own = kwargs.get("attention_mask") if view.family == "moescope" else None
            self._lead[view.index] = (lead, own)

        return hook

    def _capture(self, view: MoELayerView, reader: Reader, logits: Callable | None):
        def hook(module: nn.Module, args: tuple, output) -> None:
            with torch.no_grad():
                indices, weights, scores = reader(output, view)
                indices, weights = sort_by_weight(indices.long(), weights.float())
                selection = None if logits is None else logits(output, view).detach()
            if not self._in_model:             # a block called without the model
                if view.index in self._pending:    # fired twice: a new pass
                    self._finish()
                if not self._pending:
                    self._pending_batch, self._explicit = self._explicit or (None, None), None
            lead, own = self._lead.pop(view.index, ((), None))
            self._pending[view.index] = _Capture(indices.detach(), weights.detach(), scores.detach(), lead, own,
                                                 selection)

        return hook

    # -- records --------------------------------------------------------------------------------
    def _finish(self) -> None:
        ids, mask = self._pending_batch
        records = [self._record(i, c, ids, mask) for i, c in sorted(self._pending.items())]
        self._pending.clear()
        self._pending_batch = (None, None)
        self._last = records
        if self.on_pass is not None:
            self.on_pass(list(records))

    @staticmethod
    def _record(layer: int, c: _Capture, ids: Tensor | None, mask: Tensor | None) -> RoutingRecord:
        t = c.indices.shape[0]
        if len(c.lead) >= 2 and c.lead[-1] > 0 and t % c.lead[-1] == 0:
            b, s = t // c.lead[-1], c.lead[-1]
        else:
            b, s = 1, t
        real = None
        if c.own_mask is not None and c.own_mask.numel() == t:
            real = c.own_mask.reshape(b, s)
        elif mask is not None and mask.dim() == 2 and mask.shape[0] == b and mask.shape[1] >= s:
            real = mask[:, mask.shape[1] - s:]
        real = (torch.ones(t, dtype=torch.bool) if real is None else real.detach().to("cpu").bool().reshape(t))
        token_ids = None
        if ids is not None and tuple(ids.shape) == (b, s):
            token_ids = ids.detach().to("cpu", torch.int64).reshape(t)
        return RoutingRecord(layer=layer, indices=c.indices.to("cpu", torch.int64),
                             weights=c.weights.to("cpu", torch.float32), scores=c.scores.to("cpu", torch.float32),
                             batch_shape=(b, s), mask=real, token_ids=token_ids,
                             selection=None if c.selection is None else c.selection.to("cpu", torch.float32))
