"""What moescope knows about one model family, in one record.

A :class:`Family` says everything family-specific that moescope needs, so that adding a family
is one file in :mod:`moescope.models.families` (plus its tiny checkpoint in the tests):

* which ``config.json`` ``model_type`` values it answers to, and how the checkpoint is loaded;
* how to recognise its MoE blocks in a live model (the block's class name) and turn one into
  a :class:`~moescope.models.view.MoELayerView` (the *adapter*);
* where the experts a block actually used can be read (the submodule the recorder hooks and
  a *reader* of that submodule's output, see :mod:`moescope.models.readers`);
* where its MoE weights lie on disk, for reading a checkpoint one tensor at a time (the
  :class:`~moescope.models.layout.Layout`);
* optionally, the converter that lifts a block into the equivalent moescope layer
  (:func:`moescope.moe.from_hf`).

Every table the rest of the package needs (model types, block classes, readers, layouts,
converters) is derived from the records in :mod:`moescope.models.families`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from moescope.models.layout import Layout
from moescope.models.view import MoELayerView

#: What an adapter fills: the keyword arguments of MoELayerView except name, index and module.
Parts = dict
#: (block, the block's parent module or None, the block's module path) -> Parts
Adapter = Callable[[nn.Module, "nn.Module | None", str], Parts]
#: (output of the hooked module, view) -> (indices (T, k), weights (T, k), scores (T, E))
Reader = Callable[[object, MoELayerView], tuple[Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: the family's key and the ``family`` of its live layers' views (``"mixtral"``).
        title: the human-readable name (``"Mixtral"``).
        model_types: the ``config.json`` ``model_type`` values loaded as this family (empty for
            moescope's own layers, which are not loaded from a directory).
        blocks: the MoE block classes, by class name (transformers) or by type (moescope's own
            layers, matched with ``isinstance``).
        adapter: the block -> the view's parts (router, experts, shared experts, k, scoring).
        hook: dotted path, inside the block, of the module whose output ``reader`` reads
            (``""`` = the block itself).
        reader: that module's output -> the experts the block actually used.
        layout: where the MoE weights lie in the checkpoint's safetensors files; None when the
            family is not read from disk.
        from_hf: the block -> the equivalent moescope layer (weights copied), or None.
        auto_class: the transformers class that loads a checkpoint of this family.
        replayable: whether the model's forward passes nothing from one decoder layer to the next
            but the layer's output, so that a layer-major run (:mod:`moescope.models.layer_major`)
            can stand in for the layers below *l* with their kept outputs. False where the model's
            loop carries more (Inkling-2 concatenates the hidden states at block boundaries and
            feeds them to later layers and the head): streamed runs of it go batch by batch.
        selection_logits: for a sigmoid family whose top-k ranks the router *logits* (plus any selection
            bias) rather than their sigmoids (plus bias) as DeepSeek-V3 does: reads those logits (T, E) from
            the hooked module's output. The order is the same without a bias (σ is monotone) but the margins
            are not, and with one (Kolibri-1 adds it to the logits) the order differs too. The recorder keeps
            them as the record's ``selection``, so near-ties and margins are measured on what was ranked;
            steering rewrites them directly. None: the top-k ranks ``scores`` (+ bias).
    """

    name: str
    title: str
    model_types: tuple[str, ...]
    blocks: tuple[str | type, ...]
    adapter: Adapter
    hook: str
    reader: Reader
    layout: Layout | None = None
    from_hf: Callable[[nn.Module], nn.Module] | None = None
    auto_class: str = "AutoModelForCausalLM"
    replayable: bool = True
    selection_logits: Callable[[object, MoELayerView], Tensor] | None = None

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError(f"family {self.name!r} names no MoE block class")
        if self.model_types and self.layout is None:
            raise ValueError(f"family {self.name!r} loads checkpoints ({', '.join(self.model_types)}) "
                             "but has no on-disk layout")

    def ranks_logits(self, scoring: str) -> bool:
        """Whether a layer of this family scored by ``scoring`` ranks its router logits (see
        ``selection_logits``); a softmax layer's logits order the experts as its probabilities do."""
        return self.selection_logits is not None and scoring == "sigmoid"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is one of this family's MoE blocks."""
        name = type(module).__name__
        return any(isinstance(module, b) if isinstance(b, type) else name == b for b in self.blocks)
