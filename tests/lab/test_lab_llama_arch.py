"""The lab LM's ``arch="llama"`` option: RoPE, RMSNorm, q/k/v/o; and that ``nanogpt`` is untouched."""

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moescope.lab.model import (
    NON_CAUSAL_ROUTERS,
    ROUTERS,
    LMConfig,
    MoESpec,
    RotaryAttention,
    TinyLM,
    apply_rope,
    rope_cos_sin,
    total_params,
)

LLAMA = LMConfig(vocab_size=97, d_model=32, n_layer=2, n_head=4, seq_len=24, arch="llama",
                 moe=MoESpec(num_experts=4, top_k=2, expert_intermediate=16))


def _lm(router: str) -> LMConfig:
    if router == "dense":
        return replace(LLAMA, ffn="dense", dense_intermediate=48)
    return replace(LLAMA, moe=replace(LLAMA.moe, router=router), bidirectional=router in NON_CAUSAL_ROUTERS)


def test_rope_angles_by_hand():
    # head_dim 4, θ = 100: inverse frequencies 100^(-0/4) = 1 and 100^(-2/4) = 0.1, each used twice
    # (rotate-half layout: pair i is (x_i, x_{i+2})); position 3 turns pair 0 by 3 rad, pair 1 by 0.3 rad.
    cos, sin = rope_cos_sin(4, 4, 100.0)
    assert cos.shape == sin.shape == (4, 4)
    want = torch.tensor([3.0, 0.3, 3.0, 0.3])
    torch.testing.assert_close(cos[3], want.cos())
    torch.testing.assert_close(sin[3], want.sin())
    torch.testing.assert_close(cos[0], torch.ones(4))
    # x = e_0 at position 3: (x_0, x_2) = (1, 0) turns to (cos 3, sin 3)
    x = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    y = apply_rope(x, cos, sin)[0, 0, 3]
    torch.testing.assert_close(y, torch.tensor([math.cos(3.0), 0.0, math.sin(3.0), 0.0]))


def test_rope_matches_transformers():
    # an independent oracle: transformers' Mixtral rotary embedding and apply_rotary_pos_emb
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralRotaryEmbedding, apply_rotary_pos_emb

    cfg = MixtralConfig(hidden_size=64, num_attention_heads=4, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 5000.0})
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)
    hf_cos, hf_sin = MixtralRotaryEmbedding(cfg)(q, torch.arange(10)[None].expand(2, 10))
    cos, sin = rope_cos_sin(10, 16, 5000.0)
    assert torch.equal(cos, hf_cos[0]) and torch.equal(sin, hf_sin[0])
    hq, hk = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), hq, rtol=0, atol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), hk, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), shift=st.integers(1, 40))
def test_rope_scores_depend_on_relative_position_only(seed, shift):
    """<R_m q, R_n k> = <R_{m+s} q, R_{n+s} k> (RoFormer eq. 16): the score sees m − n, not m or n."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    cos, sin = rope_cos_sin(60, 16, 10_000.0)
    cos, sin = cos.double(), sin.double()

    def score(m: int, n: int) -> torch.Tensor:
        return (apply_rope(q, cos[m], sin[m]) * apply_rope(k, cos[n], sin[n])).sum()

    torch.testing.assert_close(score(7, 3), score(7 + shift, 3 + shift), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(apply_rope(q, cos[shift], sin[shift]).norm(), q.norm())  # a rotation


def test_rmsnorm_formula():
    model = TinyLM(LLAMA)
    norm = model.blocks[0].ln_1
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 32)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + LLAMA.norm_eps) * norm.weight
    torch.testing.assert_close(norm(x), want)


def test_llama_parts_and_no_position_table():
    model = TinyLM(LLAMA)
    assert model.wpe is None
    assert isinstance(model.blocks[0].attn, RotaryAttention)
    assert isinstance(model.ln_f, torch.nn.RMSNorm) and model.ln_f.eps == LLAMA.norm_eps
    names = {n for n, _ in model.named_parameters()}
    assert {"blocks.0.attn.q_proj.weight", "blocks.0.attn.o_proj.weight"} <= names
    assert not any("c_attn" in n or "wpe" in n for n in names)
    # the head-output projection has one name in both architectures (claim 12 reads W_o through it)
    assert model.blocks[1].attn.out_proj is model.blocks[1].attn.o_proj
    nano = TinyLM(replace(LLAMA, arch="nanogpt"))
    assert nano.blocks[1].attn.out_proj is nano.blocks[1].attn.c_proj


@pytest.mark.parametrize("router", [*ROUTERS, "dense"])
def test_param_count_and_a_training_step(router):
    """total_params counts the llama model exactly (no position table); every FFN kind trains."""
    cfg = _lm(router)
    torch.manual_seed(0)
    model = TinyLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == total_params(cfg)
    assert total_params(replace(cfg, arch="nanogpt")) - total_params(cfg) == cfg.seq_len * cfg.d_model
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    out = model(idx, targets=idx)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if "attn" in n)


@pytest.mark.parametrize("router", ["topk", "deepseek_v3", "switch", "dense"])
def test_causal(router):
    """Changing the tokens after position t leaves the logits at t..0 unchanged."""
    torch.manual_seed(1)
    model = TinyLM(_lm(router)).eval()
    a = torch.randint(0, 97, (1, 20))
    b = a.clone()
    b[0, 12:] = torch.randint(0, 97, (8,))
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
    torch.testing.assert_close(la[:, :12], lb[:, :12])
    assert not torch.allclose(la[:, 12:], lb[:, 12:])


def test_rope_theta_matters():
    """The positions enter through θ: a different base gives different logits (same weights)."""
    torch.manual_seed(2)
    a = TinyLM(LLAMA).eval()
    b = TinyLM(replace(LLAMA, rope_theta=10.0)).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        assert not torch.allclose(a(idx).logits, b(idx).logits)


def test_config_round_trip_and_canonical_nanogpt():
    assert LMConfig.from_dict(LLAMA.to_dict()) == LLAMA
    assert LLAMA.to_dict()["arch"] == "llama"
    # nanogpt writes no architecture keys: a run's identity (and its checkpoints' key) is as before
    d = LMConfig().to_dict()
    assert not {"arch", "rope_theta", "norm_eps"} & d.keys()
    assert LMConfig.from_dict(d) == LMConfig()
    assert LMConfig(rope_theta=5.0, norm_eps=1e-3) == LMConfig()  # unused by nanogpt: one canonical form


def test_nanogpt_default_is_pinned():
    """The default architecture draws and computes what it did before ``arch`` existed (values pinned
    from the model as it was then): no lab number moves until a later session flips the default."""
    torch.manual_seed(0)
    model = TinyLM(LMConfig(vocab_size=300, d_model=32, n_layer=2, n_head=4, seq_len=16,
                            moe=MoESpec(num_experts=4, top_k=2, expert_intermediate=16)))
    idx = torch.arange(16).view(1, 16) * 7 % 300
    with torch.no_grad():
        out = model(idx, targets=idx)
    assert sum(p.double().sum().item() for p in model.parameters()) == pytest.approx(174.53780710115217, abs=1e-9)
    assert out.loss.item() == pytest.approx(5.62013053894043, abs=1e-6)
    torch.testing.assert_close(out.logits[0, -1, :4], torch.tensor([0.10884160548448563, 0.03890461474657059,
                                                                    -0.008680291473865509, 0.07846838980913162]))


def test_nanogpt_default_keeps_its_parameters():
    names = [n for n, _ in TinyLM(LMConfig(vocab_size=300)).named_parameters()]
    assert names[:4] == ["wte.weight", "wpe.weight", "blocks.0.ln_1.weight", "blocks.0.attn.c_attn.weight"]
    assert isinstance(TinyLM(LMConfig(vocab_size=300)).ln_f, torch.nn.LayerNorm)


@pytest.mark.parametrize(("kw", "match"), [
    ({"arch": "gpt2"}, "arch must be one of nanogpt, llama"),
    ({"arch": "llama", "d_model": 12, "n_head": 4}, "head size d_model/n_head=3 must be even"),
    ({"rope_theta": 0.0}, "rope_theta must be a positive number"),
    ({"norm_eps": -1e-6}, "norm_eps must be a positive number"),
    ({"norm_eps": True}, "norm_eps must be a positive number"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        LMConfig(**kw)
