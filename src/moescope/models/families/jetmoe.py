"""JetMoE (``JetMoeMoE``): top-k of the router logits, the softmax taken over the k chosen
logits only (= softmax over E renormalised over the top k).

Live: ``mlp.router`` (``JetMoeTopKGating``, linear ``mlp.router.layer`` (E, H)) returns the
grouping it hands to the experts, ``(index_sorted_experts (T·k,), batch_index (T·k,),
batch_gates (T·k,), expert_size (E python ints), logits (T, E))``: slot j of the sorted order
goes to expert ``repeat_interleave(arange(E), expert_size)[j]``, is token ``batch_index[j]`` and
the ``index_sorted_experts[j]``-th entry of the flattened (T, k) choice. :func:`read_jetmoe`
undoes that grouping, so what is recorded is exactly what the experts received. Experts are
``mlp.input_linear.weight`` (E, 2I, H) rows [gate; up] and ``mlp.output_linear.weight``
(E, H, I). Every decoder layer is MoE. On disk: ``mlp.router.layer.weight``,
``mlp.input_linear.weight``, ``mlp.output_linear.weight``, ``mlp.bias`` (H,).

Not in the view: the block adds ``mlp.bias`` (H,) to its output (an output bias, not a router
bias). The attention is a *mixture of attention heads* (``JetMoeMoA`` under
``self_attention.experts``, with its own ``JetMoeTopKGating``): its experts are query/output
projections, not MLPs, and it is not taken for an MoE layer.
"""

from __future__ import annotations

import torch

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, Stacked
from moescope.models.parts import stacked
from moescope.models.readers import Choice, distribution
from moescope.models.view import MoELayerView


def read_jetmoe(output, view: MoELayerView) -> Choice:
    """``(index_sorted_experts, batch_index, batch_gates, expert_size, logits)`` -> the (T, k) choice."""
    order, _, gates, expert_size, logits = output
    logits = logits.reshape(-1, logits.shape[-1])                                      # (T, E)
    t, e = logits.shape
    k = order.numel() // t
    sizes = torch.as_tensor(expert_size, device=order.device)
    sorted_experts = torch.repeat_interleave(torch.arange(e, device=order.device), sizes)  # (T·k,)
    indices = torch.empty(t * k, dtype=torch.long, device=order.device)
    weights = torch.empty(t * k, dtype=gates.dtype, device=order.device)
    indices[order] = sorted_experts
    weights[order] = gates
    return indices.reshape(t, k), weights.reshape(t, k), distribution(logits, view.scoring)


def _adapter(block, parent, name):
    router = block.router
    return dict(family="jetmoe", num_experts=router.layer.weight.shape[0], top_k=int(router.top_k),
                scoring="softmax", router_weight=router.layer.weight.detach(),
                expert=stacked(block.input_linear.weight, block.output_linear.weight, where=name))


FAMILY = Family(
    name="jetmoe", title="JetMoE", model_types=("jetmoe",), blocks=("JetMoeMoE",),
    adapter=_adapter, hook="router", reader=read_jetmoe,
    layout=Layout(DECODER, "mlp.router.layer.weight", Stacked("mlp.input_linear.weight", "mlp.output_linear.weight")),
)

__all__ = ["FAMILY", "read_jetmoe"]
