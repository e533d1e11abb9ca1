"""Rewriting a router's logits inside a live block: the one mechanism behind re-route ablation and steering.

A family's router module (the one the recorder hooks, :attr:`~moescope.models.family.Family.hook`)
computes its logits with a linear map to E columns before it scores and selects experts.
:func:`rewriting_logits` runs the router's forward under a ``TorchFunctionMode`` that hands the
*first* floating-point linear map with E output columns (``F.linear``, ``matmul``, ``@``, ``einsum``,
...) to a rewrite function, so the family's own scoring, selection and renormalisation then run on
the rewritten logits — whatever the family computes after. A router whose forward never produces
such a map cannot be rewritten, and the forward fails with a :class:`RouterRewriteError` naming the
layer and the family.

**The selection bias.** Families that select on σ(z) + b (DeepSeek-V3's ``e_score_correction_bias``,
GLM-4-MoE, ...) need b edited as well: σ(−∞) = 0 plus a large b still picks an expert. The edit
is never written into the model. While the block runs, a second ``TorchFunctionMode`` hands every
torch function an *edited copy* wherever an argument lies in the bias tensor that is in place *at
that moment* (the block's parameter or buffer named once by :func:`selection_bias_home`). So it
reaches the forward the same way whether the bias is resident, loaded by a layer-streaming hook
just before the block runs (:mod:`moescope.models.streaming`: the view holds only the ``meta``
placeholder, and editing that does nothing) or loaded by accelerate inside the owner's forward
(disk offload), and nothing has to be restored — an error mid-forward leaves the model as it was.
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


# --------------------------------------------------------------------------- the selection bias

def _storage(t: Tensor) -> int | None:
    """An id of ``t``'s storage (shared by every view of it, ``meta`` tensors included), or None. The address of
    the C++ storage object: ``data_ptr`` would not do, every ``meta`` storage has address 0."""
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, ...: no plain storage
        return None


def _span(t: Tensor) -> tuple[int, int]:
    """``[first, last + 1)`` element offsets of ``t`` in its storage."""
    start = t.storage_offset()
    if t.numel() == 0:
        return start, start
    return start, start + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True)) + 1


def _inside(t: Tensor, home: Tensor) -> bool:
    """Whether ``t`` is ``home`` or a view of elements of ``home`` (same storage, dtype and span within)."""
    if t.dtype != home.dtype or t.numel() > home.numel() or t.device != home.device:
        return False
    key = _storage(t)
    if key is None or key != _storage(home):
        return False
    (lo, hi), (home_lo, home_hi) = _span(t), _span(home)
    return home_lo <= lo and hi <= home_hi


def _tensors(module: nn.Module) -> Iterator[tuple[nn.Module, str, Tensor]]:
    """``(owner, attribute name, tensor)`` for every parameter and buffer under ``module``."""
    for owner in module.modules():
        for store in (owner._parameters, owner._buffers):
            for name, t in store.items():
                if t is not None:
                    yield owner, name, t


def _get(owner: nn.Module, name: str) -> Tensor | None:
    return owner._parameters[name] if name in owner._parameters else owner._buffers.get(name)


def selection_bias_home(view: MoELayerView, error: type[RouterRewriteError] = RouterRewriteError
                        ) -> tuple[nn.Module, str]:
    """``(module, attribute name)`` of the parameter or buffer of ``view``'s block holding its selection bias.

    Found by storage: the view's bias is the module's tensor or a view of it (``meta`` placeholders
    have storages too). A view taken before accelerate swapped an offloaded tensor for a new
    placeholder no longer shares it; then the family's adapter is asked again for the block as it
    is now (one place says where each family keeps its bias).
    """
    if view.selection_bias is None:
        raise error(f"{view.name}: the {view.family} router has no selection bias")

    def candidates() -> Iterator[Tensor]:
        yield view.selection_bias
        fresh = BY_NAME[view.family].adapter(view.module, None, view.name).get("selection_bias")
        if fresh is not None:
            yield fresh

    for bias in candidates():
        for owner, name, t in _tensors(view.module):
            if _inside(bias, t):
                return owner, name
    raise error(f"{view.name}: the selection bias of the {view.family} view is not a parameter or buffer of its "
                "block (a converted copy?); it cannot be edited for the forward")


class _EditedBias(TorchFunctionMode):
    """Every torch function argument lying in ``owner.<name>`` (as it is at that call) is read from an
    edited copy: ``edit`` gets the (E,) copy and changes it in place."""

    def __init__(self, owner: nn.Module, name: str, num_experts: int, edit: Callable[[Tensor], object],
                 where: str) -> None:
        super().__init__()
        self.owner, self.name, self.E, self.edit, self.where = owner, name, num_experts, edit, where
        self.live: Tensor | None = None     # the bias in place when last read
        self.edited: Tensor | None = None   # its edited copy, same shape and strides
        self.unedited: Tensor | None = None  # (E,) float32 copy of the bias in place, before the edit
        self.read = False

    def _swap(self, live: Tensor, obj):
        if isinstance(obj, Tensor) and _inside(obj, live):
            self.read = True
            return self.edited.as_strided(obj.size(), obj.stride(), obj.storage_offset() - live.storage_offset())
        if isinstance(obj, (tuple, list)):
            return type(obj)(self._swap(live, o) for o in obj)
        if isinstance(obj, dict):
            return {k: self._swap(live, v) for k, v in obj.items()}
        return obj

    def _refresh(self, live: Tensor) -> None:
        if live.numel() != self.E or not live.is_contiguous():
            raise RouterRewriteError(f"{self.where}: the selection bias {self.name!r} has shape {tuple(live.shape)}; "
                                     f"expected {self.E} contiguous values")
        with torch.no_grad():
            self.live, self.edited = live, live.detach().clone()
            self.unedited = live.detach().reshape(-1).float().clone()
            self.edit(self.edited.view(-1))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        live = _get(self.owner, self.name)
        if live is not None and not live.is_meta:
            if live is not self.live:
                self._refresh(live)
            args, kwargs = self._swap(live, args), self._swap(live, kwargs)
        return func(*args, **kwargs)


class Reading:
    """What the block's running forward reads, for rewrites that depend on it."""

    def __init__(self, state: dict) -> None:
        self._state = state

    @property
    def bias(self) -> Tensor | None:
        """(E,) float32: the selection bias in place in the running forward, before the edit; None outside a
        forward, before the bias is in place, or without :func:`rewriting_logits`' ``selection_bias``."""
        mode = self._state.get("bias")
        return None if mode is None else mode.unedited


# --------------------------------------------------------------------------- the rewrite

@contextmanager
def rewriting_logits(view: MoELayerView, rewrite: Callable[[Tensor], Tensor], *, purpose: str,
                     error: type[RouterRewriteError] = RouterRewriteError,
                     selection_bias: Callable[[Tensor], object] | None = None) -> Iterator[Reading]:
    """Within ``view``'s block, the router's logits (…, E) are replaced by ``rewrite(logits)`` on every forward.

    ``selection_bias``, when given, edits the family's selection bias for the forward: it receives an
    (E,) copy of the bias in place and changes it in place; every read of the bias inside the block
    then sees the copy (see the module docstring). The context yields a :class:`Reading` whose
    ``bias`` is the unedited bias of the running forward, for rewrites that depend on it.
    ``purpose`` names the intervention in the ``error`` raised when the router has no such linear map
    (or, with ``selection_bias``, when the block never read its bias).
    """
    if view.module is None:
        raise error(f"{view.name}: a view read from disk has no live module to intervene on")
    router = router_module(view)
    home = None if selection_bias is None else selection_bias_home(view, error)
    state: dict[str, TorchFunctionMode] = {}
    reading = Reading(state)

    def block_pre(module, args):
        owner, name = home
        state["bias"] = _EditedBias(owner, name, view.num_experts, selection_bias, view.name)
        state["bias"].__enter__()

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

    def block_post(module, args, output):
        mode = state.pop("bias", None)
        if mode is not None:
            mode.__exit__(None, None, None)
            state["read"] = mode

    def block_check(module, args, output):  # after a forward that succeeded (not always called)
        mode = state.pop("read")
        if not mode.read:
            raise error(f"{view.name}: the {view.family} block never read its selection bias "
                        f"({type(mode.owner).__name__}.{mode.name}) in its forward; it cannot be edited for "
                        f"{purpose}")

    # Modes must leave in the reverse order of entry, also when the router is the block itself: the bias
    # mode enters first (prepended) and leaves last (registered after the router's hooks).
    handles = []
    if home is not None:
        handles.append(view.module.register_forward_pre_hook(block_pre, prepend=True))
    handles += [router.register_forward_pre_hook(pre), router.register_forward_hook(post, always_call=True)]
    if home is not None:
        handles += [view.module.register_forward_hook(block_post, always_call=True),
                    view.module.register_forward_hook(block_check)]
    try:
        yield reading
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
