"""Routers, one routing family per file; each returns a :class:`~moescope.moe.result.RouterResult`.

Every router describes itself, and everything that tabulates routers reads :data:`ROUTERS`:

* ``scoring`` (class): ``"softmax"`` or ``"sigmoid"``, the distribution its ``scores`` are;
* ``causal`` (class): whether a token's routing depends only on itself and earlier tokens;
* ``lab_name`` (class): the name the lab's ``MoESpec.router`` gives it, None if the lab does not train it;
* ``from_spec(hidden, spec)`` (classmethod): the router a :class:`BlockSpec` (e.g. the lab's
  ``MoESpec``) describes;
* ``max_experts_per_token`` / ``mean_experts_per_token`` (instance): the most experts one token
  can get, and the expert evaluations per token on average.

A new router is one file here plus its entry in :data:`ROUTERS`; the shared router tests run
over the tuple and fail for a router class that is missing from it.
"""

from moescope.moe.routers._common import BlockSpec
from moescope.moe.routers.cosine import CosineRouter
from moescope.moe.routers.deepseek import DeepSeekV3Router
from moescope.moe.routers.expert_choice import ExpertChoiceRouter
from moescope.moe.routers.gpt_oss import GptOssRouter
from moescope.moe.routers.llama4 import Llama4Router
from moescope.moe.routers.switch import SwitchRouter
from moescope.moe.routers.topk import TopKRouter

ROUTERS: tuple[type, ...] = (TopKRouter, SwitchRouter, DeepSeekV3Router, CosineRouter, ExpertChoiceRouter,
                             GptOssRouter, Llama4Router)


def by_lab_name() -> dict[str, type]:
    """The routers the lab trains, by their ``lab_name``, in :data:`ROUTERS` order."""
    return {r.lab_name: r for r in ROUTERS if r.lab_name is not None}


__all__ = ["ROUTERS", "BlockSpec", "CosineRouter", "DeepSeekV3Router", "ExpertChoiceRouter", "GptOssRouter",
           "Llama4Router", "SwitchRouter", "TopKRouter", "by_lab_name"]
