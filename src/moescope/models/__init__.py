"""Adapters: find MoE layers in moescope and Hugging Face models, view them, record their routing.

* :func:`find_moe_layers` — every MoE layer of a live model as a :class:`MoELayerView`;
* :class:`RoutingRecorder` — hooks that turn a forward pass into :class:`RoutingRecord` s;
* :func:`load_moe_model` — a local checkpoint as ``(model, tokenizer | None, views)``.
"""

from moescope.models.adapters import ADAPTERS, FAMILIES, find_moe_layers
from moescope.models.loading import MODEL_TYPES, load_moe_model
from moescope.models.recorder import READERS, RoutingRecorder, sort_by_weight
from moescope.models.view import SCORINGS, ExpertWeights, MoELayerView, RoutingRecord

__all__ = [
    "ADAPTERS", "FAMILIES", "MODEL_TYPES", "READERS", "SCORINGS", "ExpertWeights", "MoELayerView", "RoutingRecord",
    "RoutingRecorder", "find_moe_layers", "load_moe_model", "sort_by_weight",
]
