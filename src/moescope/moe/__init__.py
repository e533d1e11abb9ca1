"""MoE building blocks: routers for every family, stacked experts, dispatch, layers, losses.

Every router returns a :class:`RouterResult`; every layer returns a :class:`MoEOutput`.
:func:`from_hf` lifts a transformers MoE block into the equivalent moescope layer (the block
classes it knows are registered by the model families, see :mod:`moescope.moe.lift`).
"""

from moescope.moe.dispatch import dispatch, reference_dispatch
from moescope.moe.experts import DenseFFN, Experts, SharedExpert
from moescope.moe.layer import MoELayer
from moescope.moe.lift import from_hf, register_converter
from moescope.moe.losses import CONVENTIONS, load_balancing_loss, router_z_loss
from moescope.moe.result import MoEOutput, RouterResult
from moescope.moe.routers import (
    CosineRouter,
    DeepSeekV3Router,
    ExpertChoiceRouter,
    GptOssRouter,
    Llama4Router,
    SwitchRouter,
    TopKRouter,
)
from moescope.moe.soft import SoftMoELayer

__all__ = [
    "CONVENTIONS", "CosineRouter", "DeepSeekV3Router", "DenseFFN", "ExpertChoiceRouter", "Experts",
    "GptOssRouter", "Llama4Router", "MoELayer", "MoEOutput", "RouterResult", "SharedExpert", "SoftMoELayer",
    "SwitchRouter", "TopKRouter", "dispatch", "from_hf", "load_balancing_loss", "reference_dispatch",
    "register_converter", "router_z_loss",
]
