"""HypLoRA (moescope.curved_models.hyplora) and δ-hyperbolicity (moescope.geometry.curved.hyperbolicity).

Oracles: geoopt's Lorentz model (expmap0 / logmap0 / projx, its k is 1/c), our own Lorentz module at the
origin, peft's LoRA for the Euclidean twin, closed forms (c → 0 is LoRA; δ of a tree, a square, a cycle)
and a brute-force loop over all quadruples for δ.
"""

import itertools
import math
import warnings

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from moescope.curved_models.hyplora import (
    HypLoRAConfig,
    HypLoRALinear,
    LoRALinear,
    adapter_parameter_count,
    apply_hyplora,
    apply_lora,
    hyplora_update,
    lift,
    lorentz_low_rank,
    lower,
    trainable_parameter_count,
)
from moescope.geometry.curved import lorentz
from moescope.geometry.curved.hyperbolicity import four_point_delta, matched_gaussian, relative_delta
from moescope.lab.model import LMConfig, TinyLM

F64 = torch.float64


def _origin(shape, n, c):
    o = torch.zeros(*shape, n + 1, dtype=F64)
    o[..., 0] = 1.0 / math.sqrt(c)
    return o


def _tangent(u):
    return torch.cat([torch.zeros_like(u[..., :1]), u], dim=-1)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_lift_and_lower_are_exp_and_log_at_the_origin(c):
    u = torch.randn(7, 5, dtype=F64, generator=torch.Generator().manual_seed(1)) * 1.5
    o = _origin((7,), 5, c)
    p = lift(u, c=c)
    torch.testing.assert_close(p, lorentz.expmap(o, _tangent(u), c=c), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lower(p, c=c), lorentz.logmap(o, p, c=c)[..., 1:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lower(p, c=c), u, rtol=1e-12, atol=1e-12)   # exp then log cancels
    lorentz.check_on_hyperboloid(p, c)


def test_lift_and_lower_match_geoopt_values_and_gradients(geoopt):
    man = geoopt.Lorentz(k=1.0)                     # geoopt's k is 1/c; c = 1 avoids its eps clamps
    u = (torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(2))).requires_grad_()
    w = torch.randn(6, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    ours = (lift(u) * w).sum()
    theirs = (man.expmap0(_tangent(u)) * w).sum()
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    (g_ours,) = torch.autograd.grad(ours, u)
    (g_theirs,) = torch.autograd.grad(theirs, u)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-8, atol=1e-10)
    x = man.expmap0(_tangent(u.detach())).requires_grad_()
    v = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    ours, theirs = (lower(x) * v).sum(), (man.logmap0(x)[..., 1:] * v).sum()
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    g_ours, g_theirs = torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, x)[0]
    # the log map reads only the space part (time is implied on the sheet): compare tangent directions
    torch.testing.assert_close(g_ours[..., 1:], g_theirs[..., 1:] + g_theirs[..., :1] * x[..., 1:] / x[..., :1],
                               rtol=1e-7, atol=1e-9)


def test_lorentz_low_rank_stays_on_the_sheet_and_matches_geoopt_projx(geoopt):
    gen = torch.Generator().manual_seed(5)
    for c in (0.3, 1.0, 4.0):
        x = lift(torch.randn(9, 6, dtype=F64, generator=gen), c=c)
        a, b = torch.randn(3, 6, dtype=F64, generator=gen), torch.randn(8, 3, dtype=F64, generator=gen)
        y = lorentz_low_rank(x, a, b, c=c)
        assert y.shape == (9, 9)
        lorentz.check_on_hyperboloid(y, c)
        torch.testing.assert_close(y[..., 1:], x[..., 1:] @ (b @ a).T)        # BA acts on the space part only
        oracle = geoopt.Lorentz(k=1.0 / c).projx(torch.cat([torch.zeros(9, 1, dtype=F64), y[..., 1:]], -1))
        torch.testing.assert_close(y, oracle, rtol=1e-8, atol=1e-12)   # geoopt clamps at its own eps when k != 1


def test_update_gradcheck_in_float64():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 5, dtype=F64, generator=gen).requires_grad_()
    a = torch.randn(2, 5, dtype=F64, generator=gen).requires_grad_()
    b = torch.randn(3, 2, dtype=F64, generator=gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a, b: hyplora_update(x, a, b, c=1.3, scale=1.7), (x, a, b))
    assert torch.autograd.gradcheck(lambda x, a, b: lorentz_low_rank(lift(x, c=0.7), a, b, c=0.7), (x, a, b))
    # through the radius clip (every input beyond it)
    assert torch.autograd.gradcheck(lambda x, a, b: hyplora_update(3 * x, a, b, scale=1.0, max_radius=0.5), (x, a, b))


def test_no_cancellation_but_lora_in_the_flat_limit():
    """exp/log cancel only when BA is the identity; otherwise HypLoRA differs from LoRA, and tends to it as c → 0."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(10, 6, dtype=F64, generator=gen) * 2
    a, b = torch.randn(3, 6, dtype=F64, generator=gen), torch.randn(6, 3, dtype=F64, generator=gen)
    lora = x @ a.T @ b.T
    hyp = hyplora_update(x, a, b, c=1.0, scale=1.0)
    assert (hyp - lora).abs().max() > 0.5                                    # a different function ...
    torch.testing.assert_close(hyplora_update(x, a, b, c=1e-12, scale=1.0), lora, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.nn.functional.normalize(hyp, dim=-1),
                               torch.nn.functional.normalize(lora, dim=-1))  # ... that only reshapes the radius
    eye = torch.eye(6, dtype=F64)
    torch.testing.assert_close(hyplora_update(x, eye, eye, c=1.0, scale=1.0), x)  # BA = I: the round trip cancels


def test_gradient_at_b_zero_is_loras_times_sinhc():
    """At initialisation (B = 0) every adapted point is the origin; B must still get LoRA's gradient, scaled
    per token by sinh(√c‖x/s‖)/(√c‖x/s‖) ≥ 1 (the lift's stretch)."""
    gen = torch.Generator().manual_seed(8)
    x, a = torch.randn(5, 4, dtype=F64, generator=gen), torch.randn(2, 4, dtype=F64, generator=gen)
    g_out = torch.randn(5, 3, dtype=F64, generator=gen)
    b = torch.zeros(3, 2, dtype=F64, requires_grad=True)
    c, s = 0.8, 1.5
    (hyplora_update(x, a, b, c=c, scale=s) * g_out).sum().backward()
    z = math.sqrt(c) * x.norm(dim=-1, keepdim=True) / s
    expected = g_out.T @ (torch.sinh(z) / z * (x @ a.T))
    torch.testing.assert_close(b.grad, expected)


def _tiny_lm(seed=0):
    torch.manual_seed(seed)
    return TinyLM(LMConfig(vocab_size=50, d_model=16, n_layer=2, n_head=2, seq_len=12, ffn="dense",
                           dense_intermediate=32)).eval()


@pytest.mark.parametrize("apply", [apply_hyplora, apply_lora])
def test_wrapped_model_equals_base_at_start_and_only_adapters_train(apply):
    base = _tiny_lm()
    idx = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    before = base(idx).logits
    cfg = HypLoRAConfig(rank=2, target_modules=("c_attn", "c_proj", "down_proj"))
    names = apply(base, cfg, generator=torch.Generator().manual_seed(0))
    assert names == [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "ffn.down_proj")]
    torch.testing.assert_close(base(idx).logits, before, rtol=0, atol=0)
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def _peft_lora(model, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from peft import LoraConfig, inject_adapter_in_model
    return inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,
                                              target_modules=list(cfg.target_modules)), model)


@pytest.mark.slow
def test_equal_trainable_parameters_hyplora_lora_and_peft():   # slow: peft's first import
    cfg = HypLoRAConfig(rank=3)
    models = [_tiny_lm() for _ in range(3)]
    expected = adapter_parameter_count(models[0], cfg)
    assert expected == 2 * 3 * ((16 + 48) + (16 + 16))                       # 2 layers × (c_attn + c_proj)
    apply_hyplora(models[0], cfg)
    apply_lora(models[1], cfg)
    peft_model = _peft_lora(models[2], cfg)
    assert trainable_parameter_count(models[0]) == trainable_parameter_count(models[1]) == expected
    assert trainable_parameter_count(peft_model) == expected


def test_lora_twin_matches_peft_on_the_same_weights():
    cfg = HypLoRAConfig(rank=2, alpha=5.0)
    ours, theirs = _tiny_lm(), _peft_lora(_tiny_lm(), cfg)
    apply_lora(ours, cfg)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoRALinear):
                peft_layer = theirs.get_submodule(name)
                for ab in ("lora_A", "lora_B"):
                    w = torch.randn(getattr(module, ab).weight.shape, generator=gen)
                    getattr(module, ab).weight.copy_(w)
                    getattr(peft_layer, ab)["default"].weight.copy_(w)
    idx = torch.randint(0, 50, (2, 12), generator=gen)
    torch.testing.assert_close(ours(idx).logits, theirs(idx).logits, rtol=1e-6, atol=1e-6)


def test_adapters_draw_the_same_a_from_equally_seeded_generators():
    h, e = _tiny_lm(), _tiny_lm()
    apply_hyplora(h, generator=torch.Generator().manual_seed(3))
    apply_lora(e, generator=torch.Generator().manual_seed(3))
    ha = [m.lora_A.weight for m in h.modules() if isinstance(m, HypLoRALinear)]
    ea = [m.lora_A.weight for m in e.modules() if isinstance(m, LoRALinear)]
    assert len(ha) == len(ea) == 4 and all(torch.equal(x, y) for x, y in zip(ha, ea, strict=True))


@pytest.mark.parametrize("apply", [apply_hyplora, apply_lora])
def test_learns_a_planted_low_rank_correction(apply):
    """A frozen linear layer whose target is W x + (planted rank-2 map)(x): the adapter must recover it."""
    gen = torch.Generator().manual_seed(10)
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(8, 8, bias=False))
    u, v = torch.randn(8, 2, generator=gen), torch.randn(2, 8, generator=gen)
    x = torch.randn(256, 8, generator=gen)
    with torch.no_grad():
        y = model(x) + 0.5 * x @ (u @ v).T
    apply(model, HypLoRAConfig(rank=2, target_modules=("0",)), generator=gen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.03)
    first = None
    for _ in range(300):
        loss = (model(x) - y).square().mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.02 * first   # HypLoRA reaches ~1% (a radially reshaped map), LoRA ~0


@pytest.mark.slow
def test_wraps_a_hugging_face_causal_lm():
    """Any causal LM whose projections are nn.Linear: a tiny Llama from transformers' own config class."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    idx = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    before = model(idx).logits
    cfg = HypLoRAConfig(rank=2, target_modules=("q_proj", "v_proj"))
    expected = adapter_parameter_count(model, cfg)
    names = apply_hyplora(model, cfg)
    assert len(names) == 4
    torch.testing.assert_close(model(idx).logits, before, rtol=0, atol=0)
    assert trainable_parameter_count(model) == expected == 4 * 2 * (16 + 16)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"rank": 2.5}, "rank must be a positive integer"),
    ({"curvature": -1.0}, "curvature must be a positive finite number"),
    ({"alpha": float("nan")}, "alpha must be a positive finite number"),
    ({"max_radius": 0.0}, "max_radius must be a positive finite number"),
    ({"input_scale": 0.0}, "input_scale must be None"),
    ({"target_modules": "c_attn"}, "target_modules must be a non-empty tuple"),
    ({"target_modules": ()}, "target_modules must be a non-empty tuple"),
])
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HypLoRAConfig(**kwargs)


def test_no_matching_module_names_the_available_ones():
    with pytest.raises(ValueError, match=r"no nn.Linear module matches .*'c_attn'"):
        apply_hyplora(_tiny_lm(), HypLoRAConfig(target_modules=("q_proj",)))
    with pytest.raises(ValueError, match="scale must be > 0"):
        hyplora_update(torch.zeros(2, 3), torch.zeros(1, 3), torch.zeros(2, 1), scale=0.0)


# -- δ-hyperbolicity -----------------------------------------------------------------------------
def _brute_force_delta(d: np.ndarray) -> float:
    best = 0.0
    for x, y, z, w in itertools.combinations(range(len(d)), 4):
        s = sorted((d[x, y] + d[z, w], d[x, z] + d[y, w], d[x, w] + d[y, z]))
        best = max(best, (s[2] - s[1]) / 2)
    return best


def _graph_distances(g) -> np.ndarray:
    return np.asarray(nx.floyd_warshall_numpy(g))


def test_delta_closed_forms():
    assert four_point_delta(_graph_distances(nx.random_labeled_tree(40, seed=1))) == 0.0   # trees are 0-hyperbolic
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    r = relative_delta(square)
    assert r.delta == pytest.approx(math.sqrt(2) - 1, abs=1e-12)   # (2√2 − 2)/2
    assert r.relative == pytest.approx(2 * (math.sqrt(2) - 1) / math.sqrt(2), abs=1e-12)
    for k in (1, 2, 3):                                             # C_4k: four equally spaced vertices give k
        assert four_point_delta(_graph_distances(nx.cycle_graph(4 * k))) == pytest.approx(k)


@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_brute_force_and_base_point_bounds(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((11, 1 + seed))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    exact = four_point_delta(d)
    assert exact == pytest.approx(_brute_force_delta(d), abs=1e-12)
    for w in (0, 5):
        dw = four_point_delta(d, base=w)
        assert dw <= exact + 1e-12 and exact <= 2 * dw + 1e-12
    scaled = relative_delta(3.0 * x)
    assert scaled.relative == pytest.approx(relative_delta(x).relative) and scaled.delta == pytest.approx(3 * exact)


def test_matched_gaussian_has_the_data_mean_and_covariance():
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((6, 3)) @ np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.1]]) + 4.0
    draws = np.stack([matched_gaussian(pts, rng) for _ in range(4000)])        # (D, n, d)
    flat = draws.reshape(-1, 3)
    np.testing.assert_allclose(flat.mean(0), pts.mean(0), atol=0.05)
    np.testing.assert_allclose(np.cov(flat.T), np.cov(pts.T), atol=0.06)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 3)), "n >= 4"),
    (np.zeros((4, 5)), "square"),
    (np.array([[0, 1, 2, 3], [1, 0, 1, 2], [2, 1, 0, 1], [3, 2, 9, 0.0]]), "symmetric"),
    (-np.ones((4, 4)), "non-negative"),
])
def test_delta_rejects_bad_distance_matrices(bad, match):
    with pytest.raises(ValueError, match=match):
        four_point_delta(bad)
    with pytest.raises(ValueError, match="base must be None"):
        four_point_delta(np.zeros((4, 4)), base=7)
