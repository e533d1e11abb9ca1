"""Tiny checkpoints for the weight-geometry tests: real transformers models saved with
save_pretrained, and synthetic Mixtral-layout layers (random or with planted structure)
written with :func:`moescope.analysis.checkpoint.write_safetensors`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from moescope.analysis.checkpoint import write_safetensors

H, I, E = 32, 24, 8  # not square, so a transposed matrix cannot pass by accident

_COMMON = dict(hidden_size=H, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
               max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# family -> (config class, kwargs, attribute of the live MoE block in a decoder layer)
DECODERS = {
    "mixtral": ("MixtralConfig", dict(intermediate_size=I, num_local_experts=E, num_experts_per_tok=2), "mlp"),
    "qwen2_moe": ("Qwen2MoeConfig", dict(moe_intermediate_size=I, shared_expert_intermediate_size=40, num_experts=E,
                                         num_experts_per_tok=2, intermediate_size=48), "mlp"),
    "qwen3_moe": ("Qwen3MoeConfig", dict(moe_intermediate_size=I, num_experts=E, num_experts_per_tok=2,
                                         intermediate_size=48, head_dim=8), "mlp"),
    "olmoe": ("OlmoeConfig", dict(intermediate_size=I, num_experts=E, num_experts_per_tok=2), "mlp"),
    "deepseek_v3": ("DeepseekV3Config", dict(moe_intermediate_size=I, intermediate_size=48, n_routed_experts=E,
                                             num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=2,
                                             first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
                                             qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8), "mlp"),
    "llama4_text": ("Llama4TextConfig", dict(intermediate_size=I, intermediate_size_mlp=48, num_local_experts=E,
                                             num_experts_per_tok=1, head_dim=8), "feed_forward"),
    "gpt_oss": ("GptOssConfig", dict(intermediate_size=I, num_local_experts=E, num_experts_per_tok=2, head_dim=8),
                "mlp"),
    # more families, checked by a forward pass of their experts rather than by from_hf
    "phimoe": ("PhimoeConfig", dict(intermediate_size=I, num_local_experts=E, num_experts_per_tok=2), "mlp"),
    "granitemoeshared": ("GraniteMoeSharedConfig", dict(intermediate_size=I, num_local_experts=E,
                                                        num_experts_per_tok=2, shared_intermediate_size=40),
                         "block_sparse_moe"),
    "jamba": ("JambaConfig", dict(intermediate_size=I, num_experts=E, num_experts_per_tok=2, expert_layer_period=2,
                                  expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=0, mamba_d_state=4,
                                  mamba_dt_rank=4), "feed_forward"),
    "glm4_moe": ("Glm4MoeConfig", dict(moe_intermediate_size=I, intermediate_size=48, n_routed_experts=E,
                                       num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                                       head_dim=8), "mlp"),
}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Distinct O(1) values everywhere (the default init is tiny and partly constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def decoder(family: str, seed: int = 0):
    """A tiny causal-LM of ``family`` with random weights."""
    import transformers

    cls, kwargs, _ = DECODERS[family]
    config = getattr(transformers, cls)(**_COMMON, **kwargs)
    return _randomize(transformers.AutoModelForCausalLM.from_config(config), seed)


def switch(seed: int = 0):
    """A tiny Switch Transformers encoder-decoder with sparse blocks 1 and 3 on both sides."""
    import transformers

    config = transformers.SwitchTransformersConfig(d_model=H, d_ff=I, num_experts=E, num_layers=4,
                                                   num_decoder_layers=4, num_heads=4, d_kv=8, vocab_size=64,
                                                   encoder_sparse_step=2, decoder_sparse_step=2, router_bias=True)
    return _randomize(transformers.SwitchTransformersForConditionalGeneration(config), seed)


def live_block(model: torch.nn.Module, family: str, prefix: str) -> torch.nn.Module:
    """The live MoE block behind an on-disk layer prefix."""
    if family == "switch_transformers":
        return model.get_submodule(f"{prefix}.mlp")
    return model.get_submodule(f"{prefix}.{DECODERS[family][2]}")


def save(model: torch.nn.Module, root: Path, **kwargs) -> Path:
    model.save_pretrained(root, **kwargs)
    return root


def mixtral_layer(root: Path, gate: list[torch.Tensor], up: list[torch.Tensor], router: torch.Tensor,
                  *, dtype: torch.dtype = torch.float32) -> Path:
    """A one-layer Mixtral-layout checkpoint from the given matrices (gate/up (I, H), router (E, H))."""
    e, h = router.shape
    inter = gate[0].shape[0]
    config = {"model_type": "mixtral", "hidden_size": h, "intermediate_size": inter, "num_local_experts": e,
              "num_experts_per_tok": 2, "num_hidden_layers": 1}
    (root / "config.json").write_text(json.dumps(config))
    moe = "model.layers.0.block_sparse_moe"
    tensors = {f"{moe}.gate.weight": router}
    for k in range(e):
        tensors[f"{moe}.experts.{k}.w1.weight"] = gate[k]
        tensors[f"{moe}.experts.{k}.w2.weight"] = torch.zeros(h, inter)
        tensors[f"{moe}.experts.{k}.w3.weight"] = up[k]
    specs = [(name, tuple(t.shape), dtype) for name, t in tensors.items()]
    write_safetensors(root / "model.safetensors", specs, lambda name: tensors[name].to(dtype))
    return root


def random_layer(root: Path, *, num_experts: int, hidden: int, inter: int, seed: int) -> Path:
    """i.i.d. Gaussian experts and router: every measure must sit on its null."""
    g = torch.Generator().manual_seed(seed)
    gate = [torch.randn(inter, hidden, generator=g) for _ in range(num_experts)]
    up = [torch.randn(inter, hidden, generator=g) for _ in range(num_experts)]
    return mixtral_layer(root, gate, up, torch.randn(num_experts, hidden, generator=g))


def planted_layer(root: Path, *, num_experts: int = 6, hidden: int = 64, inter: int = 24, k: int = 4,
                  strength: float = 10.0, noise: float = 0.1, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """Experts 0 and 1 read the same k-dim subspace B strongly; router row 2 lies in expert 2's.

    Each expert e has a k-dim input subspace S_e, with S_0 = S_1 = B and the others random:
    gate and up are ``strength`` · O S_eᵀ + ``noise`` · N with O (inter, k) orthonormal (k equal
    singular values) and N standard Gaussian. Router row 2 is a combination of S_2's columns.
    Returns the checkpoint and B (hidden, k).
    """
    g = torch.Generator().manual_seed(seed)
    subspaces = [torch.linalg.qr(torch.randn(hidden, k, generator=g))[0] for _ in range(num_experts)]
    subspaces[1] = subspaces[0]

    def matrix(s: torch.Tensor) -> torch.Tensor:
        o = torch.linalg.qr(torch.randn(inter, k, generator=g))[0]
        return strength * o @ s.T + noise * torch.randn(inter, hidden, generator=g)

    gate = [matrix(s) for s in subspaces]
    up = [matrix(s) for s in subspaces]
    router = torch.randn(num_experts, hidden, generator=g)
    router[2] = subspaces[2] @ torch.randn(k, generator=g)
    return mixtral_layer(root, gate, up, router), subspaces[0]
