"""The MoE layer: a router, an expert bank and optional shared experts, composed.

``MoELayer(*, router, experts, shared=None)`` in the torchtune style: keyword-only parts
passed in, no subclass per family. Mixtral is a ``TopKRouter`` with SwiGLU ``Experts``;
DeepSeek-MoE's fine-grained experts are many small experts with a larger k plus an
ungated ``SharedExpert``; Qwen2-MoE adds a sigmoid-gated shared expert; Llama 4 is a
``Llama4Router`` (weights on the input) with a shared expert.
"""

from __future__ import annotations

from torch import Tensor, nn

from moescope.moe.dispatch import METHODS, dispatch
from moescope.moe.experts import Experts
from moescope.moe.result import MoEOutput


class MoELayer(nn.Module):
    """Route, run the chosen experts, add the shared expert.

    Args:
        router: any moescope router (returns a ``RouterResult``); its ``num_experts`` and
            ``hidden`` must match the experts'.
        experts: the routed :class:`~moescope.moe.experts.Experts`.
        shared: a module applied to every token and added (e.g. ``SharedExpert``), or None.
        dispatch: dispatch path (``auto``, ``sorted``, ``loop``, ``bmm``, ``reference``).
    """

    def __init__(self, *, router: nn.Module, experts: Experts, shared: nn.Module | None = None,
                 dispatch: str = "auto") -> None:
        super().__init__()
        if dispatch not in METHODS:
            raise ValueError(f"dispatch must be one of {', '.join(METHODS)}; got dispatch={dispatch!r}")
        if getattr(router, "num_experts", experts.num_experts) != experts.num_experts:
            raise ValueError(f"router has {router.num_experts} experts but the expert bank has {experts.num_experts}")
        if getattr(router, "hidden", experts.hidden) != experts.hidden:
            raise ValueError(f"router expects hidden size {router.hidden} but the experts have {experts.hidden}")
        self.router, self.experts, self.shared, self.dispatch = router, experts, shared, dispatch

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> MoEOutput:
        """x (..., H) -> MoEOutput(hidden (..., H), routing over the flattened tokens).

        ``attention_mask`` (same leading shape as x, 1 = real token) keeps padding out of the
        auxiliary losses (and out of expert-choice selection).
        """
        self.experts.check_input(x)
        routing = self.router(x, attention_mask=attention_mask)
        flat = x.reshape(-1, x.shape[-1])
        out = dispatch(flat, routing.indices, routing.weights, self.experts,
                       weight_input=routing.weight_input, method=self.dispatch)
        if self.shared is not None:
            out = out + self.shared(flat)
        return MoEOutput(hidden=out.view(x.shape), routing=routing)
