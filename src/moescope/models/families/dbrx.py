"""DBRX (``DbrxFFN``): softmax over E experts, top-k (``ffn_config.moe_top_k``), the k weights
divided by their p-norm, p = ``moe_normalize_expert_weights`` (1.0 in the released model: the
weights sum to 1; None: not normalised).

Live: ``ffn.router`` (``DbrxRouter``) returns only the logits (T, E); the choice is made by
the block's own ``route_tokens_to_experts(logits)``, which :func:`read_dbrx` calls on the
router's output — the same function on the same tensor, so the same experts and weights the
block hands to ``ffn.experts``. The router matrix is ``ffn.router.layer.weight`` (E, H). The
experts are three *flat* matrices ``ffn.experts.mlp.w1 | v1 | w2``, each (E·I, H): expert e owns
rows [e·I, (e+1)·I); w1 is the gate, v1 the up projection, and w2 the down projection stored
transposed (expert e's down is ``w2[e·I:(e+1)·I].T``, (H, I)). Every block is MoE. On disk,
under the prefix ``transformer.blocks.{i}``: ``ffn.router.layer.weight``,
``ffn.experts.mlp.w1``, ``ffn.experts.mlp.v1``, ``ffn.experts.mlp.w2`` (no ``.weight`` suffix,
no per-expert split); k is nested in ``config.json`` under ``ffn_config.moe_top_k``.

Not in the view: the p of the weight normalisation (the recorded weights include it). The
on-disk layout needs two things :mod:`moescope.analysis.checkpoint` does not read yet: the
:class:`Flat` expert storage and a nested config key for k (``top_k`` holds the dotted path).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from moescope.models.family import Family
from moescope.models.layout import Flat, Layout
from moescope.models.parts import check_expert
from moescope.models.readers import Choice, distribution
from moescope.models.view import ExpertWeights, MoELayerView


def flat(gate: Tensor, up: Tensor, down: Tensor, num_experts: int, *,
         where: str = "") -> Callable[[int], ExpertWeights]:
    """Expert e of :class:`Flat` storage, in moescope orientation: gate (I, H), up (I, H), down (H, I)."""
    gate, up, down = gate.detach(), up.detach(), down.detach()
    shape = tuple(gate.shape)
    if len(shape) != 2 or shape[0] % num_experts or tuple(up.shape) != shape or tuple(down.shape) != shape:
        raise ValueError(f"{where}: expected w1, v1, w2 of one shape (E·I, H) with E = {num_experts}; got "
                         f"{tuple(gate.shape)}, {tuple(up.shape)}, {tuple(down.shape)}")
    inter = shape[0] // num_experts

    def expert(e: int) -> ExpertWeights:
        check_expert(e, num_experts)
        rows = slice(e * inter, (e + 1) * inter)
        return ExpertWeights(gate=gate[rows], up=up[rows], down=down[rows].t())

    return expert


def read_dbrx(output, view: MoELayerView) -> Choice:
    """The router's logits (T, E) -> the block's own ``route_tokens_to_experts`` of them."""
    logits = output.reshape(-1, output.shape[-1])
    weights, indices = view.module.route_tokens_to_experts(logits)
    return indices, weights, distribution(logits, view.scoring)


def _adapter(block, parent, name):
    mlp, num_experts = block.experts.mlp, int(block.experts.num_experts)
    return dict(family="dbrx", num_experts=num_experts, top_k=int(block.top_k), scoring="softmax",
                router_weight=block.router.layer.weight.detach(),
                expert=flat(mlp.w1, mlp.v1, mlp.w2, num_experts, where=name))


FAMILY = Family(
    name="dbrx", title="DBRX", model_types=("dbrx",), blocks=("DbrxFFN",),
    adapter=_adapter, hook="router", reader=read_dbrx,
    layout=Layout((r"transformer\.blocks\.(\d+)",), "ffn.router.layer.weight",
                  Flat(gate="ffn.experts.mlp.w1", up="ffn.experts.mlp.v1", down="ffn.experts.mlp.w2"),
                  top_k=("ffn_config.moe_top_k",)),
)

__all__ = ["FAMILY", "Flat", "flat", "read_dbrx"]
