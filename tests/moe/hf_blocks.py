"""Tiny transformers MoE blocks built from their real config classes, with random weights."""

from __future__ import annotations

import torch
from torch import nn

H, I, E = 32, 24, 8  # tiny but not square, so a transposed weight cannot pass by accident


def _randomize(block: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return block.float().eval()


def mixtral(seed: int = 0):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=2)
    return _randomize(MixtralSparseMoeBlock(cfg), seed)


def qwen2_moe(seed: int = 0, norm_topk_prob: bool = False):
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    cfg = Qwen2MoeConfig(hidden_size=H, moe_intermediate_size=I, shared_expert_intermediate_size=40,
                         num_experts=E, num_experts_per_tok=3, norm_topk_prob=norm_topk_prob)
    return _randomize(Qwen2MoeSparseMoeBlock(cfg), seed)


def qwen3_moe(seed: int = 0, norm_topk_prob: bool = True):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=2,
                         norm_topk_prob=norm_topk_prob)
    return _randomize(Qwen3MoeSparseMoeBlock(cfg), seed)


def olmoe(seed: int = 0):
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    cfg = OlmoeConfig(hidden_size=H, intermediate_size=I, num_experts=E, num_experts_per_tok=2)
    return _randomize(OlmoeSparseMoeBlock(cfg), seed)


def deepseek_v3(seed: int = 0):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    cfg = DeepseekV3Config(hidden_size=H, moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=3,
                           n_group=4, topk_group=2, n_shared_experts=2, routed_scaling_factor=2.5,
                           norm_topk_prob=True)
    block = _randomize(DeepseekV3MoE(cfg), seed)
    g = torch.Generator().manual_seed(seed + 1)
    block.gate.e_score_correction_bias.copy_(torch.randn(E, generator=g) * 0.5)  # non-zero bias
    return block


def llama4(seed: int = 0):
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    cfg = Llama4TextConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=1)
    return _randomize(Llama4TextMoe(cfg), seed)


def gpt_oss(seed: int = 0):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    cfg = GptOssConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=4)
    block = _randomize(GptOssMLP(cfg), seed)
    with torch.no_grad():  # large weights so the +-limit clamp is exercised
        block.experts.gate_up_proj.mul_(8.0)
    return block


def switch(seed: int = 0, expert_capacity: int = 3):
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    cfg = SwitchTransformersConfig(d_model=H, d_ff=I, num_experts=E, expert_capacity=expert_capacity,
                                   router_bias=True, router_jitter_noise=0.0)
    return _randomize(SwitchTransformersSparseMLP(cfg), seed)


FAMILIES = {"mixtral": mixtral, "qwen2_moe": qwen2_moe, "qwen3_moe": qwen3_moe, "olmoe": olmoe,
            "deepseek_v3": deepseek_v3, "llama4": llama4, "gpt_oss": gpt_oss, "switch": switch}
