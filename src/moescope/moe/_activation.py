"""The expert activation shared by the dispatch paths' hand-written backward passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moescope.moe.experts import Experts


def fast_swiglu(experts: Experts) -> bool:
    """SwiGLU with SiLU: the activation whose backward is written by hand (all but GPT-OSS and Switch)."""
    return experts.gate == "swiglu" and experts.act is F.silu


class Recomputed:
    """The experts' activation a0 = inner(h) recomputed from the kept first projection h
    (..., 2I | I), and its backward: ``backward(g_a)`` -> d/dh (may overwrite ``g_a``)."""

    def __init__(self, experts: Experts, h: Tensor) -> None:
        self.h, self.fast = h, fast_swiglu(experts)
        if self.fast:
            self.inner = experts.intermediate
            self.silu_g = F.silu(h[..., : self.inner])
            self.a0 = self.silu_g * h[..., self.inner :]
        else:
            with torch.enable_grad():
                self.h_leaf = h.detach().requires_grad_(True)
                self.graph = experts.inner(self.h_leaf)
            self.a0 = self.graph.detach()

    def backward(self, g_a: Tensor) -> Tensor:
        if not self.fast:
            return torch.autograd.grad(self.graph, self.h_leaf, g_a)[0]
        h, i = self.h, self.inner
        g_h = torch.empty_like(h)
        torch.mul(g_a, self.silu_g, out=g_h[..., i:])
        torch.ops.aten.silu_backward.grad_input(g_a.mul_(h[..., i:]), h[..., :i], grad_input=g_h[..., :i])
        return g_h


def activation(experts: Experts, h: Tensor) -> Tensor:
    """(..., 2I | I) first projection -> a fresh (..., I) activation (may be scaled in place)."""
    if fast_swiglu(experts):
        i = experts.intermediate
        return F.silu(h[..., :i]).mul_(h[..., i:])
    return experts.inner(h)
