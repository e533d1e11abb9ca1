"""Rewriting a router's logits inside a live block: the one mechanism behind re-route ablation and steering.

A family's router module (the one the recorder hooks, :attr:`~moescope.models.family.Family.hook`)
computes its logits with a linear map to E columns before it scores and selects experts.
:func:`rewriting_logits` runs the router's forward under a ``TorchFunctionMode`` that hands the
*first* floating-point linear map with E output columns (``F.linear``, ``matmul``, ``@``, ``einsum``,
...) to a rewrite function, so the family's own scoring, selection and renormalisation then run on
the rewritten logits — whatever the family computes after. A router whose forward never produces
such a map cannot be rewritten, and the forward fails with a :class:`RouterRewriteError` naming the
layer and the family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from moescope.models.families import BY_NAME
from moescope.models.view import MoELayerView

LINEAR_MAPS = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.einsum,
               torch.addmm, torch.bmm}


class RouterRewriteError(ValueError):
    """A router whose logits cannot be rewritten (named in the message)."""


class _Rewrite(TorchFunctionMode):
    """Passes the first floating-point linear map with ``E`` output columns through ``rewrite`` (once)."""

    def __init__(self, num_experts: int, rewrite: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.E, self.rewrite, self.done = num_experts, rewrite, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (not self.done and func in LINEAR_MAPS and isinstance(out, Tensor) and out.dim() >= 1
                and out.shape[-1] == self.E and out.is_floating_point()):
            self.done = True
            out = self.rewrite(out.clone())
        return out


def router_module(view: MoELayerView) -> nn.Module:
    """The submodule of ``view``'s block whose forward computes the routing (the block itself if none)."""
    family = BY_NAME[view.family]
    return view.module.get_submodule(family.hook) if family.hook else view.module


@contextmanager
def rewriting_logits(view: MoELayerView, rewrite: Callable[[Tensor], Tensor], *, purpose: str,
                     error: type[RouterRewriteError] = RouterRewriteError) -> Iterator[None]:
    """Within ``view``'s block, the router's logits (…, E) are replaced by ``rewrite(logits)`` on every forward.

    ``purpose`` names the intervention in the ``error`` raised when the router has no such linear map.
    """
    if view.module is None:
        raise error(f"{view.name}: a view read from disk has no live module to intervene on")
    router = router_module(view)
    state: dict[str, _Rewrite] = {}

    def pre(module, args):
        state["mode"] = _Rewrite(view.num_experts, rewrite)
        state["mode"].__enter__()

    def post(module, args, output):
        mode = state.pop("mode")
        mode.__exit__(None, None, None)
        if not mode.done:
            raise error(f"{view.name}: no linear map with {view.num_experts} outputs ran inside the "
                                     f"{view.family} router ({type(module).__name__}); its scores cannot be "
                                     f"rewritten for {purpose}")

    handles = [router.register_forward_pre_hook(pre), router.register_forward_hook(post, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def saved(*tensors: Tensor) -> Iterator[None]:
    """Restore ``tensors``' values on exit (they are changed in place inside)."""
    copies = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, c in zip(tensors, copies, strict=True):
                t.copy_(c)
