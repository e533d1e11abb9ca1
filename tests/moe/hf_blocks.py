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


def mixtral(seed: int = 0, *, hidden: int = H, inter: int = I, experts: int = E, top_k: int = 2):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts,
                        num_experts_per_tok=top_k)
    return _randomize(MixtralSparseMoeBlock(cfg), seed)


def qwen2_moe(seed: int = 0, norm_topk_prob: bool = False, *, hidden: int = H, inter: int = I, experts: int = E,
              top_k: int = 3):
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    cfg = Qwen2MoeConfig(hidden_size=hidden, moe_intermediate_size=inter, shared_expert_intermediate_size=40,
                         num_experts=experts, num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob)
    return _randomize(Qwen2MoeSparseMoeBlock(cfg), seed)


def qwen3_moe(seed: int = 0, norm_topk_prob: bool = True, *, hidden: int = H, inter: int = I, experts: int = E,
              top_k: int = 2):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=hidden, moe_intermediate_size=inter, num_experts=experts,
                         num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob)
    return _randomize(Qwen3MoeSparseMoeBlock(cfg), seed)


def olmoe(seed: int = 0, *, hidden: int = H, inter: int = I, experts: int = E, top_k: int = 2):
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    cfg = OlmoeConfig(hidden_size=hidden, intermediate_size=inter, num_experts=experts, num_experts_per_tok=top_k)
    return _randomize(OlmoeSparseMoeBlock(cfg), seed)


def deepseek_v3(seed: int = 0, *, hidden: int = H, inter: int = I, experts: int = E, top_k: int = 3):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    n_group = next(g for g in (4, 2, 1) if experts % g == 0 and experts // g >= 2)   # groups of >= 2 experts
    topk_group = max(1, n_group // 2)
    top_k = min(top_k, topk_group * (experts // n_group))
    cfg = DeepseekV3Config(hidden_size=hidden, moe_intermediate_size=inter, n_routed_experts=experts,
                           num_experts_per_tok=top_k, n_group=n_group, topk_group=topk_group, n_shared_experts=2,
                           routed_scaling_factor=2.5, norm_topk_prob=True)
    block = _randomize(DeepseekV3MoE(cfg), seed)
    g = torch.Generator().manual_seed(seed + 1)
    block.gate.e_score_correction_bias.copy_(torch.randn(experts, generator=g) * 0.5)  # non-zero bias
    return block


def llama4(seed: int = 0, *, hidden: int = H, inter: int = I, experts: int = E, top_k: int = 1):
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    cfg = Llama4TextConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts,
                           num_experts_per_tok=top_k)
    return _randomize(Llama4TextMoe(cfg), seed)


def gpt_oss(seed: int = 0, *, hidden: int = H, inter: int = I, experts: int = E, top_k: int = 4):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    cfg = GptOssConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts,
                       num_experts_per_tok=top_k)
    block = _randomize(GptOssMLP(cfg), seed)
    with torch.no_grad():  # large weights so the +-limit clamp is exercised
        block.experts.gate_up_proj.mul_(8.0)
    return block


def switch(seed: int = 0, expert_capacity: int = 3, *, hidden: int = H, inter: int = I, experts: int = E,
           top_k: int = 1):
    assert top_k == 1, "Switch routes each token to one expert"
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    cfg = SwitchTransformersConfig(d_model=hidden, d_ff=inter, num_experts=experts, expert_capacity=expert_capacity,
                                   router_bias=True, router_jitter_noise=0.0)
    return _randomize(SwitchTransformersSparseMLP(cfg), seed)


FAMILIES = {"mixtral": mixtral, "qwen2_moe": qwen2_moe, "qwen3_moe": qwen3_moe, "olmoe": olmoe,
            "deepseek_v3": deepseek_v3, "llama4": llama4, "gpt_oss": gpt_oss, "switch": switch}
