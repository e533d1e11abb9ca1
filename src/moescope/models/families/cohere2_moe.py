"""Cohere2-MoE (``Cohere2MoeSparseMoeBlock``): top-k on the logits, then softmax or sigmoid.

Routing (``Cohere2MoeTopKRouter``): the k largest logits ``x Wᵀ`` are chosen first; their
weights are, with ``expert_selection_fn="softmax"``, the softmax over those k logits (equal to
the full softmax renormalised over the k), with ``"sigmoid"`` their sigmoids (renormalised
when ``norm_topk_prob``). Shared experts (``num_shared_experts > 0``): one MLP of width
``num_shared_experts · intermediate_size``, combined with the routed sum by
``shared_expert_combination_strategy``: ``"sum"`` adds it, ``"average"`` (the default) returns
``(routed + shared) / 2``. Layers whose ``mlp_layer_types`` entry is ``"dense"`` are a dense
``Cohere2MoeMLP``.

Live: ``block.gate`` (``weight`` (E, H), ``top_k``, ``expert_selection_fn``; returns
``(logits, weights, indices)``), stacked ``block.experts.gate_up_proj`` (E, 2I, H) /
``down_proj`` (E, H, I), ``block.shared_experts`` (absent without shared experts). On disk (hub
layout): ``mlp.gate.weight``, ``mlp.experts.{e}.{gate,up,down}_proj.weight``,
``mlp.shared_experts.{gate,up,down}_proj.weight``.

Not in the view: the ``"average"`` combination (the block's output is half of
Σ w·expert + shared; read ``block.shared_expert_combination_strategy``). The scoring
follows ``expert_selection_fn``, read from the router (live) or the config (disk). In sigmoid
mode the top-k ranks the logits, not their sigmoids (``selection_logits``).
"""

from moescope.models.family import Family
from moescope.models.layout import DECODER, Layout, glu
from moescope.models.parts import mlp, topk_family
from moescope.models.readers import read_triple, triple_logits

SCORINGS = {"softmax": "softmax", "sigmoid": "sigmoid"}  # expert_selection_fn -> view scoring


def _adapter(block, parent, name):
    gate = block.gate
    fn = gate.expert_selection_fn
    if fn not in SCORINGS:
        raise ValueError(f"{name}: expert_selection_fn must be one of {sorted(SCORINGS)}; got {fn!r}")
    shared = (mlp(block.shared_experts),) if getattr(block, "shared_experts", None) is not None else ()
    parts = topk_family("cohere2_moe", gate, block.experts, name, shared=shared)
    return {**parts, "scoring": SCORINGS[fn]}


FAMILY = Family(
    name="cohere2_moe", title="Cohere2-MoE", model_types=("cohere2_moe",), blocks=("Cohere2MoeSparseMoeBlock",),
    adapter=_adapter, hook="gate", reader=read_triple, selection_logits=triple_logits,
    layout=Layout(DECODER, "mlp.gate.weight", glu("mlp"), shared=(glu("mlp.shared_experts", ""),),
                  scoring_key="expert_selection_fn"),
)
