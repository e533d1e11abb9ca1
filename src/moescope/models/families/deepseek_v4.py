r"""DeepSeek-V4 (``DeepseekV4SparseMoeBlock``): sqrt-softplus scores, selection bias, hash layers.

Routing (transformers 5.24 ``DeepseekV4TopKRouter``): s = score_fn(x·Wᵀ) with ``scoring_func``
``sqrtsoftplus`` (s = \sqrt{softplus(l)}, the released checkpoints) or ``sigmoid``; the k experts
are the top-k of s + b (b = ``e_score_correction_bias``, the selection bias; no expert groups);
the combine weights are the unbiased s of the k chosen divided by their sum, times
``routed_scaling_factor``. The first ``mlp_layer_types == "hash_moe"`` layers route by a frozen
table instead (``DeepseekV4HashRouter``): the k experts are ``tid2eid[input_id]`` (V4 paper
§2.1), weighted as above; their router has no selection bias. Every layer is MoE and adds one
always-on shared MLP of the expert width.

Live: ``block.gate`` (either router; both return ``(logits, weights, indices)``, which is what
the recorder reads, so hash choices are recorded exactly), stacked ``block.experts``
``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I), ``block.shared_experts``
(``gate_proj``/``up_proj``/``down_proj``). The block is called on the hyper-connection-collapsed
stream (B, S, H), so its input and output are ordinary hidden states.

On disk (hub names, which ``save_pretrained`` writes back): ``[model.]layers.{i}.ffn.gate.weight``,
``ffn.gate.bias`` (E,) = the selection bias (absent in hash layers, which store the int64
``ffn.gate.tid2eid`` (vocab, k) instead), ``ffn.experts.{e}.w1|w3|w2.weight`` (gate | up | down),
``ffn.shared_experts.w1|w3|w2.weight``.

Not in the view: the hash table ``tid2eid`` (a hash layer's choice does not depend on x, so
the view's router and selection bias do not predict it); the SwiGLU clamp of routed *and*
shared experts (gate ≤ ``swiglu_limit``, \|up\| ≤ ``swiglu_limit``, as GPT-OSS); with
``mlp_bias`` the shared MLP's biases. ``scoring`` is ``"sqrtsoftplus"`` (the released
checkpoints) or ``"sigmoid"``, read from the router (live) or the config's ``scoring_func`` (disk).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from moescope.models.family import Family, Parts
from moescope.models.layout import Layout, Separate
from moescope.models.parts import mlp, param, topk_family
from moescope.models.readers import Choice, distribution
from moescope.models.view import MoELayerView


def _scoring(gate: nn.Module) -> str:
    fn = gate.score_fn
    if isinstance(fn, nn.Sigmoid):
        return "sigmoid"
    if type(fn).__name__ == "SqrtSoftplusActivation":
        return "sqrtsoftplus"
    raise ValueError(f"DeepSeek-V4 router scoring {type(fn).__name__} is not supported; "
                     "expected scoring_func 'sqrtsoftplus' or 'sigmoid'")


def scores(logits: Tensor, scoring: str) -> Tensor:
    r"""(T, E) float32 scores: \sqrt{softplus(l)} for ``sqrtsoftplus``, else sigmoid / softmax."""
    if scoring == "sqrtsoftplus":
        return F.softplus(logits.reshape(-1, logits.shape[-1]).float()).sqrt()
    return distribution(logits, scoring)


def read_v4(output, view: MoELayerView) -> Choice:
    """``(logits, weights, indices)`` of either V4 router; scores by the view's scoring function."""
    logits, weights, indices = output[0], output[1], output[2]
    k = indices.shape[-1]
    return indices.reshape(-1, k), weights.reshape(-1, k), scores(logits, view.scoring)


def _adapter(block: nn.Module, parent: nn.Module | None, name: str) -> Parts:
    gate = block.gate
    parts = topk_family("deepseek_v4", gate, block.experts, name, shared=(mlp(block.shared_experts),),
                        selection_bias=param(getattr(gate, "e_score_correction_bias", None)))
    return {**parts, "scoring": _scoring(gate)}


def _w13(base: str) -> Separate:
    return Separate(gate=f"{base}.w1.weight", up=f"{base}.w3.weight", down=f"{base}.w2.weight")


FAMILY = Family(
    name="deepseek_v4", title="DeepSeek-V4", model_types=("deepseek_v4",), blocks=("DeepseekV4SparseMoeBlock",),
    adapter=_adapter, hook="gate", reader=read_v4,
    layout=Layout((r"(?:model\.)?layers\.(\d+)",), "ffn.gate.weight", _w13("ffn.experts.{e}"),
                  shared=(_w13("ffn.shared_experts"),), selection_bias="ffn.gate.bias", scoring="sqrtsoftplus",
                  scoring_key="scoring_func"),
)
