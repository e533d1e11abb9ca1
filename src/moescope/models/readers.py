"""Readers: what an MoE block's router returned -> the experts the block actually used.

The recorder hooks one submodule of each block (named by the family's ``hook``) and hands its
output to the family's reader, which returns ``(indices (T, k), weights (T, k), scores (T, E))``.
The choices are *read*, never re-derived from logits (see :mod:`moescope.models.recorder`).
``scores`` is the full distribution: the softmax of the logits for softmax routers, the
sigmoid for sigmoid routers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moescope.models.view import MoELayerView

Choice = tuple[Tensor, Tensor, Tensor]  # indices (T, k), weights (T, k), scores (T, E)


def distribution(logits: Tensor, scoring: str) -> Tensor:
    logits = logits.reshape(-1, logits.shape[-1]).float()
    return torch.sigmoid(logits) if scoring == "sigmoid" else torch.softmax(logits, dim=-1)


def read_triple(output, view: MoELayerView) -> Choice:
    """``(logits, weights, indices)``: Mixtral, Qwen, OLMoE, DeepSeek, GPT-OSS, PhiMoE, GraniteMoE."""
    logits, weights, indices = output[0], output[1], output[2]
    k = indices.shape[-1]
    return indices.reshape(-1, k), weights.reshape(-1, k), distribution(logits, view.scoring)


def triple_logits(output, view: MoELayerView) -> Tensor:
    """(T, E) float32 router logits of a ``(logits, weights, indices)`` router (Kolibri-1, Cohere2-MoE)."""
    return output[0].reshape(-1, output[0].shape[-1]).float()


def llama4_logits(output, view: MoELayerView) -> Tensor:
    """(T, E) float32 router logits of Llama 4's ``(scores, logits)`` router."""
    return output[1].reshape(-1, output[1].shape[-1]).float()


def read_llama4(output, view: MoELayerView) -> Choice:
    """``(scores, logits)``: the chosen experts are the non-zero scores (see the module warning)."""
    scores, logits = output[0], output[1]
    scores = scores.reshape(-1, scores.shape[-1]).float()
    weights, indices = scores.topk(view.top_k, dim=-1)
    return indices.masked_fill(weights == 0, -1), weights, distribution(logits, "sigmoid")


def read_switch(output, view: MoELayerView) -> Choice:
    """``(dispatch one-hot (B, S, E), probs (B, S, 1), logits)``: no 1 in a row = dropped token."""
    dispatch, probs, logits = output[0], output[1], output[2]
    dispatch = dispatch.reshape(-1, dispatch.shape[-1])
    kept = dispatch.bool().any(-1, keepdim=True)                                 # (T, 1)
    indices = dispatch.argmax(-1, keepdim=True).masked_fill(~kept, -1)
    weights = probs.reshape(-1, 1).float() * kept
    return indices, weights, distribution(logits, "softmax")


def read_moescope(output, view: MoELayerView) -> Choice:
    """moescope ``MoEOutput``: its ``RouterResult``; soft routing's scores are per-expert mass."""
    r = output.routing
    return r.indices, r.weights, r.weights if view.scoring == "soft" else r.scores
