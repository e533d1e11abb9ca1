"""Inkling-2 (``Inkling2SparseMoeBlock``): sigmoid top-k with a selection bias, softcapped experts.

Routing (``Inkling2TopKRouter``): ``s = score_fn(x Wᵀ)`` in float32 (``scoring_func``, sigmoid in
every released config); the k experts are the top-k of ``s + e_score_correction_bias`` (no
groups); their weights are the unbiased ``s_i`` renormalised over the k, times ``route_scale``
(``routed_scaling_factor``). No shared expert; every decoder layer is MoE.

Model types: ``inkling2_text`` (the language model alone; the vision-language ``inkling2`` is not
loadable with ``AutoModelForCausalLM`` and is not claimed here).

Live: ``block.gate`` (``weight`` (E, H), ``e_score_correction_bias`` (E,), ``top_k``; returns
``(logits, weights, indices)``), stacked ``block.experts.gate_up_proj`` (E, 2I, H) /
``down_proj`` (E, H, I). On disk (the hub's naming, which ``save_pretrained`` restores), under
``model.llm.layers.{i}``: ``mlp.gate.weight``, the selection bias as ``mlp.gate.bias`` (it is
*not* added to the logits), stacked ``mlp.experts.w13_weight`` (E, 2I, H) with gate and up rows
*interleaved* (gate even, up odd; transformers de-interleaves it into ``gate_up_proj`` [gate; up]
on load) and
``mlp.experts.w2_weight`` (E, H, I).

Not in the view: the experts' activation, a softcapped SwiGLU
``softcap(g, mlp_gate_softcap) · sigmoid(g) · softcap(u, mlp_up_softcap)`` with
``softcap(v, c) = c · tanh(v / c)`` (``block.experts.act_fn``), not ``silu(g) · u``.
"""

from moescope.models.family import Family
from moescope.models.layout import Layout, Stacked
from moescope.models.parts import topk_family
from moescope.models.readers import read_triple

SCORINGS = ("sigmoid",)  # scoring_func values whose scores the view describes


def adapter(family: str):
    """The adapter of an Inkling-2-style block (shared with Inkling-2-Loop)."""
    def adapt(block, parent, name):
        gate = block.gate
        fn = gate.score_fn.__class__.__name__.lower()
        if "sigmoid" not in fn:
            raise ValueError(f"{name}: scoring_func must be one of {SCORINGS}; got the activation {fn!r}")
        parts = topk_family(family, gate, block.experts, name, selection_bias=gate.e_score_correction_bias.detach())
        return {**parts, "scoring": "sigmoid"}

    return adapt


LAYOUT = Layout((r"model\.llm\.layers\.(\d+)",), "mlp.gate.weight",
                Stacked("mlp.experts.w13_weight", "mlp.experts.w2_weight", interleaved=True),
                selection_bias="mlp.gate.bias", scoring="sigmoid")

FAMILY = Family(
    name="inkling2_text", title="Inkling-2", model_types=("inkling2_text",), blocks=("Inkling2SparseMoeBlock",),
    adapter=adapter("inkling2_text"), hook="gate", reader=read_triple, layout=LAYOUT,
    replayable=False,  # the model's loop feeds block-boundary states to later layers: no layer-major replay
)
