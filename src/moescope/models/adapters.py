"""Find the MoE layers of a live model and describe each one as a :class:`MoELayerView`.

:func:`find_moe_layers` walks ``model.named_modules()`` and asks the family registry
(:func:`moescope.models.families.for_block`) whether a module is an MoE block: transformers'
blocks are recognised by class name, moescope's own layers by type. The block's family's
*adapter* then reads the router and experts *where the block keeps them* and converts every
layout to moescope's orientation (rows index the output): gate (I, H), up (I, H), down (H, I).
Each family file in :mod:`moescope.models.families` states its block's live layout; the
building blocks the adapters share (stacked, transposed or interleaved experts; gated MLPs as
shared experts) are in :mod:`moescope.models.parts`.

Every stacked layout is checked against the shapes it must have, so a transformers version
that changes a layout fails loudly instead of silently transposing an expert. The tensors a
view returns are detached *views* of the live parameters (no copy): treat them as read-only.

A view describes what routing analysis needs — router, experts, shared experts, k, scoring,
biases, groups — and not everything a block computes: expert biases and activations, clamps,
shared-expert gates and where the combine weight is applied stay in the module (each family's
file says what its view leaves out). Recording does not need them; reproducing a block's output
from the view does (``tests/models`` reads them from the module).
"""

from __future__ import annotations

from torch import nn

from moescope.models.families import FAMILIES, for_block
from moescope.models.view import MoELayerView


def supported() -> str:
    """One line naming every supported family and the block classes it is recognised by."""
    titles = ", ".join(f.title for f in FAMILIES)
    blocks = ", ".join(b if isinstance(b, str) else b.__name__ for f in FAMILIES for b in f.blocks)
    return f"supported families: {titles} (blocks: {blocks})"


def find_moe_layers(model: nn.Module) -> list[MoELayerView]:
    """Every MoE layer of ``model``, in module order, as views indexed 0, 1, ...

    A matched block's own submodules are not searched again. Raises ``ValueError`` (listing
    the supported families) when the model holds no MoE layer this module knows.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"find_moe_layers expects a torch.nn.Module; got {type(model).__name__}")
    modules = dict(model.named_modules())
    views: list[MoELayerView] = []
    inside: list[str] = []
    for name, module in modules.items():
        if any(prefix == "" or name.startswith(prefix + ".") for prefix in inside):
            continue
        family = for_block(module)
        if family is None:
            continue
        parent = modules.get(name.rpartition(".")[0]) if name else None
        try:
            parts = family.adapter(module, parent, name or type(module).__name__)
        except AttributeError as err:  # a transformers version that renamed the block's parts
            raise ValueError(f"{name or 'the model'}: {type(module).__name__} does not have the layout moescope "
                             f"expects ({err}); {supported()}") from err
        views.append(MoELayerView(name=name, index=len(views), module=module, **parts))
        inside.append(name)
    if not views:
        raise ValueError(f"no MoE layer found in {type(model).__name__} "
                         f"(a dense model, or an architecture moescope does not know); {supported()}")
    return views
