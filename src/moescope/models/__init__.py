"""Adapters: find MoE layers in moescope and Hugging Face models, view them, record their routing.

* :mod:`moescope.models.families` — one file per model family; the registry every table derives
  from (:data:`BY_NAME`, :data:`BY_MODEL_TYPE`, :func:`for_block`);
* :func:`find_moe_layers` — every MoE layer of a live model as a :class:`MoELayerView`;
* :class:`RoutingRecorder` — hooks that turn a forward pass into :class:`RoutingRecord` s;
* :func:`load_moe_model` — a local checkpoint as ``(model, tokenizer | None, views)``.
"""

from moescope.models.adapters import find_moe_layers, supported
from moescope.models.families import BY_MODEL_TYPE, BY_NAME, FAMILIES, for_block, supported_model_types
from moescope.models.family import Family
from moescope.models.loading import load_moe_model
from moescope.models.recorder import RoutingRecorder, sort_by_weight
from moescope.models.view import SCORINGS, ExpertWeights, MoELayerView, RoutingRecord

__all__ = [
    "BY_MODEL_TYPE", "BY_NAME", "FAMILIES", "SCORINGS", "ExpertWeights", "Family", "MoELayerView", "RoutingRecord",
    "RoutingRecorder", "find_moe_layers", "for_block", "load_moe_model", "sort_by_weight", "supported",
    "supported_model_types",
]
