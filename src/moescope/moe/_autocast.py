"""Autocast and the custom-autograd dispatch paths: the operands cast where autocast would cast them.

``torch.autocast`` casts the inputs of the ops it knows (``F.linear``, ``matmul``, ...) to its
dtype; a custom ``autograd.Function`` (the ``sorted`` and ``bmm`` paths) runs its own GEMMs on
whatever it is given, and its backward runs outside autocast. :func:`operands` therefore casts the
paths' floating operands once, before the function, by differentiable casts, and the path runs with
autocast off (:func:`autocast_off`); the caller returns the output in the input's dtype, so the
residual stream keeps its dtype as it does around an autocast ``F.linear``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moescope.moe.experts import Experts


def operands(x: Tensor, w: Tensor, experts: Experts) -> tuple[Tensor | None, ...]:
    """``(x, w, gate_up, down, gate_up_bias, down_bias)`` as the custom-autograd paths take them.

    A custom autograd function is not autocast-aware: under ``torch.autocast`` on x's device its
    GEMMs would meet float32 weights and bfloat16 activations. So here, under autocast, every
    floating operand is cast to autocast's dtype by a differentiable ``.to`` — the GEMMs run in
    that dtype and the gradients reach the float32 parameters through the casts, as autocast's
    own ``F.linear`` does — and the caller runs the path with autocast off (:func:`autocast_off`)
    and returns its output in x's dtype.
    """
    args = (x, w, experts.gate_up_proj, experts.down_proj, experts.gate_up_bias, experts.down_bias)
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return args
    dtype = torch.get_autocast_dtype(device)
    return tuple(None if t is None else t.to(dtype) for t in args)


def autocast_off(x: Tensor) -> torch.autocast:
    """A context with autocast off on x's device (the paths' operands are cast by :func:`operands`)."""
    return torch.autocast(x.device.type, enabled=False)
