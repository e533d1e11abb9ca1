"""Fused expert tensors loaded into one buffer, without transformers' stacking copy.

transformers builds a fused expert tensor (Mixtral's per-expert ``w1``/``w3`` into one ``gate_up_proj``,
``w2`` into ``down_proj``) with ``MergeModulelist(dim=0)`` then ``Concatenate(dim)``: every source, the
stacks and the result exist at once, twice the fused tensor. :func:`filling` swaps those two ops for one
(:func:`fill_fused_op`) that writes the same tensor into one buffer and frees each source as it is copied;
the layer streamer (:mod:`moescope.models.streaming`) loads with it.
"""

from __future__ import annotations

import copy
import functools

import torch

__all__ = ["fill_fused_op", "filling"]


@functools.cache
def fill_fused_op():
    """The conversion op that replaces ``MergeModulelist(dim=0)`` [+ ``Concatenate(dim=d >= 1)``] (defined in a
    function, as transformers is imported lazily; cached, so that every call returns the same class and
    ``isinstance`` can tell a filled converter)."""
    from transformers.core_model_loading import ConversionOps

    class FillFused(ConversionOps):
        """Stack each source pattern's per-expert tensors and concatenate the stacks along ``dim`` — the tensor
        ``MergeModulelist(0)`` then ``Concatenate(dim)`` build — written into one buffer, each source freed as
        soon as it is copied. transformers' ops hold every source, the stacks and the result at once (twice
        the fused tensor: 3.5 GiB for one Mixtral-8x7B ``gate_up_proj``); this holds the result and one source."""

        def __init__(self, dim: int | None) -> None:
            self.dim = dim  # None: stack only (no concatenation)

        @torch.no_grad()
        def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
            patterns = [p for p in source_patterns if p in input_dict]
            lists = [input_dict[p] for p in patterns]
            if len(target_patterns) != 1 or any(not isinstance(t, list) or not t for t in lists) \
                    or len({len(t) for t in lists}) != 1 or len({(t[0].shape, t[0].dtype) for t in lists}) != 1:
                raise ValueError(f"cannot fuse {source_patterns} into {target_patterns}: expected equal lists of "
                                 "per-expert tensors of one shape")
            first = lists[0][0]
            if self.dim is None and len(lists) != 1:
                raise ValueError(f"stacking {source_patterns} into one {target_patterns} needs one source pattern")
            shape = [len(lists[0]), *first.shape]
            width = first.shape[self.dim - 1] if self.dim is not None else 0
            if self.dim is not None:
                shape[self.dim] = width * len(lists)
            out = torch.empty(shape, dtype=first.dtype, device=first.device)
            for j, pattern in enumerate(patterns):
                tensors = input_dict.pop(pattern)
                for e in range(len(tensors)):
                    slot = out.select(0, e)
                    if self.dim is not None:
                        slot = slot.narrow(self.dim - 1, j * width, width)
                    slot.copy_(tensors[e])
                    tensors[e] = None  # the source's last reference: freed now, not after the loop
            return {target_patterns[0]: out}

    return FillFused


def filling(mapping: list | None) -> list | None:
    """A copy of transformers' conversion ``mapping`` whose expert-fusing converters fill one buffer
    (:func:`fill_fused_op`); every other converter is left as it is."""
    if not mapping:
        return mapping
    from transformers.core_model_loading import Concatenate, MergeModulelist, WeightConverter

    fill = fill_fused_op()
    mapping = copy.deepcopy(mapping)
    for m in mapping:
        ops = getattr(m, "operations", None) if isinstance(m, WeightConverter) else None
        if not ops or type(ops[0]) is not MergeModulelist or ops[0].dim != 0:
            continue
        if len(ops) == 1 and len(m.source_patterns) == 1:
            m.operations = [fill(None)]
        elif len(ops) == 2 and type(ops[1]) is Concatenate and ops[1].dim >= 1:
            m.operations = [fill(ops[1].dim)]
    return mapping
