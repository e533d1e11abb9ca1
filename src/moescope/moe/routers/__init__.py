"""Routers, one routing family per file; each returns a :class:`~moescope.moe.result.RouterResult`."""

from moescope.moe.routers.cosine import CosineRouter
from moescope.moe.routers.deepseek import DeepSeekV3Router
from moescope.moe.routers.expert_choice import ExpertChoiceRouter
from moescope.moe.routers.gpt_oss import GptOssRouter
from moescope.moe.routers.llama4 import Llama4Router
from moescope.moe.routers.switch import SwitchRouter
from moescope.moe.routers.topk import TopKRouter

__all__ = ["CosineRouter", "DeepSeekV3Router", "ExpertChoiceRouter", "GptOssRouter", "Llama4Router",
           "SwitchRouter", "TopKRouter"]
