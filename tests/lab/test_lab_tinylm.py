from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch
from lab_fixtures import TINY_LM, TINY_TRAIN

from moescope.lab.model import (
    IGNORE_INDEX,
    NON_CAUSAL_ROUTERS,
    ROUTERS,
    LMConfig,
    MoESpec,
    NonCausalRouterWarning,
    TinyLM,
    active_params_per_token,
    dense_equivalent,
    mask_tokens,
    total_params,
)
from moescope.lab.train import RunSpec
from moescope.models import RoutingRecorder

# From the router catalogue (whether each router is causal is checked by behaviour in test_lab_routers.py).
CAUSAL = ("dense", *(r for r in ROUTERS if r not in NON_CAUSAL_ROUTERS))
NON_CAUSAL = NON_CAUSAL_ROUTERS


def _cfg(router: str, **moe) -> LMConfig:
    if router == "dense":
        return replace(TINY_LM, ffn="dense", dense_intermediate=48)
    return replace(TINY_LM, moe=replace(TINY_LM.moe, router=router, **moe))


def _model(cfg: LMConfig, seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(cfg).eval()


# -- parameter accounting --------------------------------------------------------------------------
CONFIGS = [_cfg("dense"), *(_cfg(r) for r in ROUTERS),
           _cfg("topk", num_experts=8, top_k=3, expert_intermediate=8, shared_experts=2, shared_intermediate=8),
           replace(TINY_LM, d_model=48, n_layer=3, n_head=3, vocab_size=300, seq_len=20)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.router}-d{c.d_model}-L{c.n_layer}")
def test_total_params_equals_counted(cfg):
    with pytest.warns(NonCausalRouterWarning) if not cfg.causal else nullcontext():
        model = TinyLM(cfg)
    assert total_params(cfg) == sum(p.numel() for p in model.parameters())


def test_active_params_by_hand():
    # V=512, T=16, d=32, L=2, E=4, k=2, I=32: embeddings 512·32 + 16·32 = 16896, final norm 32;
    # per layer 2·32 + 4·32² = 4160, router 4·32 = 128, one expert 3·32·32 = 3072.
    cfg = TINY_LM
    per_layer_total = 4160 + 128 + 4 * 3072
    assert total_params(cfg) == 16896 + 32 + 2 * per_layer_total                  # 50208
    assert active_params_per_token(cfg) == 16896 + 32 + 2 * (4160 + 128 + 2 * 3072)  # 37920
    # Switch: one expert per token; Expert Choice with c = 2: two; Soft with S = 8 slots per
    # expert over T = 16 tokens: E·S/T = 2.
    assert active_params_per_token(_cfg("switch")) == 16896 + 32 + 2 * (4160 + 128 + 3072)
    assert active_params_per_token(_cfg("expert_choice")) == active_params_per_token(cfg)
    soft = _cfg("soft")
    assert soft.slots_per_expert == 8
    assert active_params_per_token(soft) == 16896 + 32 + 2 * (4160 + 32 * 4 * 8 + 1 + 2 * 3072)


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=lambda c: f"{c.router}-d{c.d_model}")
@pytest.mark.parametrize("match", ["active", "total"])
def test_dense_equivalent_within_documented_rounding(cfg, match):
    dense = dense_equivalent(cfg, match)
    assert dense.ffn == "dense" and dense.d_model == cfg.d_model and dense.n_layer == cfg.n_layer
    assert dense.bidirectional == cfg.bidirectional
    target = active_params_per_token(cfg) if match == "active" else total_params(cfg)
    assert abs(total_params(dense) - target) <= 1.5 * cfg.d_model * cfg.n_layer + 1   # +1: active is rounded
    assert total_params(dense) == active_params_per_token(dense)
    assert total_params(dense) == sum(p.numel() for p in TinyLM(dense).parameters())


# -- causality -----------------------------------------------------------------------------------
def _future_leak(cfg: LMConfig, cut: int = 9) -> float:
    """Largest change of logits at positions < cut when every token at >= cut is changed."""
    model = _model(cfg)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(3, cfg.vocab_size, (3, cfg.seq_len), generator=gen)
    changed = idx.clone()
    changed[:, cut:] = torch.randint(3, cfg.vocab_size, (3, cfg.seq_len - cut), generator=gen)
    with torch.no_grad():
        a, b = model(idx).logits, model(changed).logits
    assert not torch.equal(a[:, cut:], b[:, cut:])   # the change did reach the later positions
    return float((a[:, :cut] - b[:, :cut]).abs().max())


@pytest.mark.parametrize("router", CAUSAL)
def test_causal_routers_do_not_see_the_future(router):
    # Switch with a small capacity drops tokens; counted per sequence in order, that stays causal
    # (counted over the whole batch it would not: row 1's first tokens would see row 0's last).
    cfg = _cfg(router, capacity_factor=0.5) if router == "switch" else _cfg(router)
    assert cfg.causal
    if router == "switch":
        with torch.no_grad():
            routing = _model(cfg)(torch.randint(3, 512, (3, 16))).routing
        assert any(float(r.stats["drop_rate"]) > 0 for r in routing)
    assert _future_leak(cfg) <= 1e-6


@pytest.mark.parametrize("router", NON_CAUSAL)
def test_soft_and_expert_choice_leak_the_future_in_a_causal_lm(router):
    """The trap, documented: with causal attention these routers still see later tokens."""
    cfg = _cfg(router)
    assert not cfg.causal
    with pytest.warns(NonCausalRouterWarning, match=router):
        leak = _future_leak(cfg)
    assert leak > 1e-4


@pytest.mark.parametrize("router", NON_CAUSAL)
def test_non_causal_routers_only_on_the_masked_objective(router):
    with pytest.raises(ValueError, match="causal objective needs a causal LM"):
        RunSpec("x", _cfg(router), TINY_TRAIN, objective="causal")
    with pytest.raises(ValueError, match="bidirectional=True"):
        RunSpec("x", replace(_cfg("topk")), TINY_TRAIN, objective="masked")
    spec = RunSpec("x", replace(_cfg(router), bidirectional=True), TINY_TRAIN, objective="masked")
    assert spec.comparable_group == "masked"
    assert RunSpec("y", _cfg("topk"), TINY_TRAIN).comparable_group == "causal"


def test_bidirectional_attention_sees_the_future():
    cfg = replace(_cfg("dense"), bidirectional=True)
    assert not cfg.causal
    assert _future_leak(cfg) > 1e-4


# -- forward contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("router", ("dense", *ROUTERS))
def test_forward_output(router):
    cfg = _cfg(router)
    if not cfg.causal:
        cfg = replace(cfg, bidirectional=True)
    model = _model(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    out = model(idx, targets=idx)
    assert out.logits.shape == (2, cfg.seq_len, cfg.vocab_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    if router == "dense":
        assert out.routing is None and out.aux_losses == {}
        return
    assert len(out.routing) == cfg.n_layer
    assert all(r.logits.shape[0] == 2 * cfg.seq_len for r in out.routing)
    expected = {"topk": {"load_balance", "z_loss"}, "switch": {"load_balance", "z_loss"},
                "cosine": {"load_balance", "z_loss"}, "deepseek_v3": {"seq_balance"},
                "expert_choice": {"z_loss"}, "soft": set()}[router]
    assert set(out.aux_losses) == expected
    for name, value in out.aux_losses.items():   # summed over layers
        assert torch.allclose(value, sum(r.aux_losses[name] for r in out.routing))
    out.loss.backward()


def test_padding_does_not_reach_real_tokens():
    for cfg in (_cfg("topk"), replace(_cfg("dense"), bidirectional=True)):
        model = _model(cfg)
        idx = torch.randint(3, 512, (2, 16))
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[1, 10:] = 0
        other = idx.clone()
        other[1, 10:] = 2                                                # different padding content
        with torch.no_grad():
            a, b = model(idx, attention_mask=mask).logits, model(other, attention_mask=mask).logits
        assert torch.allclose(a[1, :10], b[1, :10], atol=1e-6)
        full = model(idx, targets=idx, attention_mask=mask).loss
        ref = model(idx, targets=idx.masked_fill(mask == 0, IGNORE_INDEX), attention_mask=mask).loss
        assert torch.equal(full, ref)


def test_mask_tokens():
    idx = torch.arange(3 * 20).view(3, 20) + 10
    x, y = mask_tokens(idx, mask_id=1, rate=0.15, generator=torch.Generator().manual_seed(0))
    chosen = x == 1
    assert chosen.sum(1).tolist() == [3, 3, 3]                          # round(0.15·20) per row
    assert torch.equal(y[chosen], idx[chosen]) and (y[~chosen] == IGNORE_INDEX).all()
    assert torch.equal(x[~chosen], idx[~chosen])
    x2, _ = mask_tokens(idx, mask_id=1, rate=0.15, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_routing_recorder_reads_the_lab_model():
    model = _model(_cfg("topk"))
    idx = torch.randint(0, 512, (2, 16))
    with RoutingRecorder(model) as rec, torch.no_grad():
        out = model(idx)
        records = rec.pop()
    assert [r.layer for r in records] == [0, 1]
    for rec_, routing in zip(records, out.routing, strict=True):
        assert rec_.batch_shape == (2, 16)
        assert torch.equal(rec_.token_ids, idx.reshape(-1))
        assert torch.equal(rec_.indices.sort(-1).values, routing.indices.sort(-1).values)


@pytest.mark.parametrize("kw, match", [({"d_model": 30, "n_head": 4}, "divisible"), ({"ffn": "moe2"}, "ffn"),
                                       ({"seq_len": 0}, "seq_len")])
def test_bad_lm_config(kw, match):
    with pytest.raises(ValueError, match=match):
        replace(TINY_LM, **kw)


@pytest.mark.parametrize("kw, match", [({"router": "hash"}, "router"), ({"top_k": 9}, "top_k"),
                                       ({"shared_experts": 1}, "shared"),
                                       ({"router": "soft", "shared_experts": 1, "shared_intermediate": 4}, "soft")])
def test_bad_moe_spec(kw, match):
    with pytest.raises(ValueError, match=match):
        MoESpec(**kw)


def test_too_long_sequence():
    with pytest.raises(ValueError, match="seq_len"):
        _model(TINY_LM)(torch.zeros(1, 17, dtype=torch.long))


# -- upcycled initialisation -----------------------------------------------------------------------
def _expert_cosines(bank: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of the experts' flattened weights, (E, E)."""
    flat = torch.nn.functional.normalize(bank.detach().reshape(bank.shape[0], -1), dim=1)
    return flat @ flat.T


@pytest.mark.parametrize("router", ["topk", "deepseek_v3", "cosine"])
def test_upcycled_experts_are_noisy_copies_of_expert_zero(router):
    random_start = _model(_cfg(router))
    upcycled = _model(_cfg(router, init="upcycled"))
    for rand_layer, up_layer in zip(random_start.moe_layers(), upcycled.moe_layers(), strict=True):
        for name in ("gate_up_proj", "down_proj"):
            bank = getattr(up_layer.experts, name)
            noise = bank - bank[0:1]
            # every expert differs from expert 0 by about 1% of its std (expert 0 carries noise too,
            # so the difference of two has std ≈ sqrt(2)·1%)
            ratio = noise[1:].std() / bank[0].std()
            assert 0.01 < ratio < 0.02
            off = ~torch.eye(bank.shape[0], dtype=torch.bool)
            assert _expert_cosines(bank)[off].min() > 0.999                    # similarity starts at ~1
            assert _expert_cosines(getattr(rand_layer.experts, name))[off].abs().max() < 0.2  # at chance
    # everything but the expert banks starts as the random model does (same seed)
    same = {k: v for k, v in random_start.state_dict().items() if "experts." not in k}
    for k, v in same.items():
        assert torch.equal(v, upcycled.state_dict()[k]), k


def test_upcycled_init_is_deterministic_and_seeded():
    cfg = _cfg("topk", init="upcycled")
    a, b, c = _model(cfg, seed=3), _model(cfg, seed=3), _model(cfg, seed=4)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.moe_layers()[0].experts.gate_up_proj, c.moe_layers()[0].experts.gate_up_proj)


def test_bad_expert_init_is_refused():
    with pytest.raises(ValueError, match="init must be one of random, upcycled"):
        MoESpec(init="copied")
    with pytest.raises(ValueError, match="upcycle_noise"):
        MoESpec(init="upcycled", upcycle_noise=-0.1)


def test_upcycled_spec_survives_json():
    spec = RunSpec("up", _cfg("topk", init="upcycled"), TINY_TRAIN)
    assert RunSpec.from_dict(spec.to_dict()) == spec


# -- the head at the predicted positions only --------------------------------------------------------
@pytest.mark.parametrize("router", ["dense", "soft", "expert_choice"])
def test_logits_at_targets_gives_the_same_loss_and_gradients(router):
    cfg = replace(_cfg(router), bidirectional=True)
    model = _model(cfg).train()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len), generator=g)
    x, y = mask_tokens(idx, mask_id=1, rate=0.25, generator=g)
    grads, losses = [], []
    for sparse in (False, True):
        model.zero_grad()
        out = model(x, targets=y, logits_at_targets=sparse)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
        n = int((y != IGNORE_INDEX).sum())
        assert out.logits.shape == ((n, cfg.vocab_size) if sparse else (3, cfg.seq_len, cfg.vocab_size))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    for full, sparse in zip(*grads, strict=True):
        torch.testing.assert_close(full, sparse, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs targets"):
        model(x, logits_at_targets=True)
