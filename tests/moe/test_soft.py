"""Soft MoE against an independent einsum oracle, a hand-derived case, properties and gradcheck."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moescope.moe.experts import Experts
from moescope.moe.soft import SoftMoELayer, soft_logits, soft_weights

H, INNER = 6, 5
GATES = {"swiglu": {}, "none": {"gate": "none", "activation": "gelu"}, "gpt_oss": {"gate": "gpt_oss", "bias": True}}


def _layer(e: int = 3, s: int = 2, *, gate: str = "swiglu", normalize: bool = True, seed: int = 0,
           dtype: torch.dtype = torch.float64) -> SoftMoELayer:
    torch.manual_seed(seed)
    layer = SoftMoELayer(hidden=H, experts=Experts(e, H, INNER, **GATES[gate]), slots_per_expert=s, normalize=normalize)
    with torch.no_grad():
        layer.scale.fill_(1.7)  # off its init so a misplaced scale shows
    return layer.to(dtype)


def _oracle(layer: SoftMoELayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper Algorithm 1 with vmoe's normalisation, written out independently: x (G, T, H)."""
    g, t, h = x.shape
    n, p = layer.num_experts, layer.slots_per_expert
    mu = layer.slots.detach().reshape(h, n, p)                                  # vmoe's mu (d, n, p)
    xn = x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)                   # normalize(inputs, axis=-1)
    mun = layer.scale.detach() * mu / torch.sqrt((mu * mu).sum(0, keepdim=True) + 1e-6)  # scale · normalize(mu, 0)
    logits = torch.einsum("gmd,dnp->gmnp", xn, mun)
    dispatch = torch.softmax(logits, dim=1)                                     # over tokens m
    combine = torch.softmax(logits.reshape(g, t, n * p), dim=-1).reshape(g, t, n, p)  # over all slots (n, p)
    slot_in = torch.einsum("gmnp,gmd->gnpd", dispatch, x)                       # (g, n, p, d)
    slot_out = torch.stack([layer.experts.expert(i, slot_in[:, i].reshape(-1, h)).reshape(g, p, h)
                            for i in range(n)], dim=1)                          # (g, n, p, d)
    return torch.einsum("gmnp,gnpd->gmd", combine, slot_out), combine.reshape(g * t, n * p)


@pytest.mark.parametrize("g", [1, 2, 3])
@pytest.mark.parametrize("t", [1, 5, 17])
@pytest.mark.parametrize(("e", "s"), [(1, 1), (3, 2), (4, 1), (4, 2)])
@pytest.mark.parametrize("magnitude", [1.0, 1e-3])  # 1e-3: ‖x‖² ~ eps, so eps placement matters
def test_matches_einsum_oracle(g: int, t: int, e: int, s: int, magnitude: float) -> None:
    layer = _layer(e, s, seed=g * 100 + t)
    x = torch.randn(g, t, H, dtype=torch.float64) * magnitude
    out = layer(x if g > 1 else x[0])
    expected, combine = _oracle(layer, x)
    torch.testing.assert_close(out.hidden.reshape(g, t, H), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.routing.scores, combine, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.routing.weights, combine.reshape(g * t, e, s).sum(-1), atol=1e-12, rtol=0)


def test_hand_derived_one_expert_one_slot() -> None:
    # One expert, one slot, identity weights: expert(x) = relu(x) = x for x >= 0; Φ = (1, 0), scale 2.
    experts = Experts(1, 2, 2, gate="none", activation="relu").double()
    layer = SoftMoELayer(hidden=2, experts=experts).double()
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.eye(2)[None])
        experts.down_proj.copy_(torch.eye(2)[None])
        layer.slots.copy_(torch.tensor([[1.0], [0.0]]))
        layer.scale.fill_(2.0)
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    # logits: l1 = 2·3 / sqrt(25 + ε) / sqrt(1 + ε) ≈ 1.2, l2 = 2·0 = 0.
    l1 = 2 * 3 / math.sqrt(25 + 1e-6) / math.sqrt(1 + 1e-6)
    # dispatch = softmax over the 2 tokens: p1 = e^l1 / (e^l1 + 1) ≈ 0.76852, p2 = 1 - p1 ≈ 0.23148.
    p1 = math.exp(l1) / (math.exp(l1) + 1)
    # slot = p1·(3, 4) + p2·(0, 2) ≈ (2.30557, 3.53705); one slot => combine = 1, both tokens get it.
    slot = [3 * p1, 4 * p1 + 2 * (1 - p1)]
    out = layer(x)
    torch.testing.assert_close(out.hidden, torch.tensor([slot, slot], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.routing.scores, torch.ones(2, 1, dtype=torch.float64))
    torch.testing.assert_close(out.routing.logits, torch.tensor([[l1], [0.0]], dtype=torch.float64))
    assert abs(slot[0] - 2.30557) < 1e-5 and abs(slot[1] - 3.53705) < 1e-5


def test_stats_on_uniform_logits() -> None:
    # Φ = 0 normalises to 0, so every logit is 0: dispatch uniform over T, combine uniform over E·S.
    layer, t, e, s = _layer(4, 2), 5, 4, 2
    with torch.no_grad():
        layer.slots.zero_()
    stats = layer(torch.randn(2, t, H, dtype=torch.float64)).routing.stats
    torch.testing.assert_close(stats["dispatch_entropy"], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(stats["combine_entropy"], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(stats["dispatch_max"], torch.tensor(1 / t, dtype=torch.float64))
    torch.testing.assert_close(stats["combine_max"], torch.tensor(1 / (e * s), dtype=torch.float64))
    torch.testing.assert_close(stats["expert_combine_mass"], torch.full((e,), 1 / e, dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), g=st.integers(1, 3), t=st.integers(1, 9), e=st.integers(1, 4),
       s=st.integers(1, 3), log_scale=st.floats(-2, 2))
def test_weight_properties(seed: int, g: int, t: int, e: int, s: int, log_scale: float) -> None:
    torch.manual_seed(seed)
    x = torch.randn(g, t, H, dtype=torch.float64) * 10**log_scale
    dispatch, combine = soft_weights(soft_logits(x, torch.randn(H, e * s), torch.tensor(3.0)))
    ones = torch.ones((), dtype=torch.float64)
    torch.testing.assert_close(dispatch.sum(1), ones.expand(g, e * s))      # each slot: convex mix of tokens
    torch.testing.assert_close(combine.sum(-1), ones.expand(g, t))          # each token: convex mix of slots
    routing = _layer(e, s, seed=seed)(x).routing
    torch.testing.assert_close(routing.weights.sum(-1), ones.expand(g * t))
    assert torch.equal(routing.indices, torch.arange(e).expand(g * t, e))
    assert routing.tokens_per_expert.tolist() == [g * t] * e and routing.aux_losses == {}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), t=st.integers(2, 12))
def test_permutation_equivariance(seed: int, t: int) -> None:
    layer, torch_gen = _layer(seed=seed), torch.Generator().manual_seed(seed)
    x = torch.randn(2, t, H, dtype=torch.float64, generator=torch_gen)
    perm = torch.randperm(t, generator=torch_gen)
    torch.testing.assert_close(layer(x[:, perm]).hidden, layer(x).hidden[:, perm], atol=1e-12, rtol=0)


def test_not_causal() -> None:
    # The causality trap: a *later* token changes an *earlier* token's output.
    layer = _layer()
    x = torch.randn(1, 6, H, dtype=torch.float64)
    y = x.clone()
    y[0, -1] += 1.0
    assert (layer(x).hidden[0, 0] - layer(y).hidden[0, 0]).abs().max() > 1e-6


def test_masking() -> None:
    layer = _layer()
    x = torch.randn(3, 7, H, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0     # right padding
    mask[1, :2] = 0     # left padding
    mask[2] = 0         # a group with no real token
    dispatch, _ = soft_weights(soft_logits(x, layer.slots, layer.scale), mask.bool())
    assert torch.all(dispatch[mask == 0] == 0) and not dispatch.isnan().any()
    out = layer(x, attention_mask=mask)
    y = x.clone()
    y[mask == 0] = 1e3 * torch.randn(int((mask == 0).sum()), H, dtype=torch.float64)
    out_y = layer(y, attention_mask=mask)
    assert torch.equal(out.hidden[mask == 1], out_y.hidden[mask == 1])       # padding cannot leak in
    assert torch.all(out.hidden[mask == 0] == 0)
    # Padding is the same as removing the padded tokens from the group.
    torch.testing.assert_close(out.hidden[0, :4], layer(x[0, :4]).hidden, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.hidden[1, 2:], layer(x[1, 2:]).hidden, atol=1e-12, rtol=0)
    assert out.routing.tokens_per_expert.tolist() == [int(mask.sum())] * layer.num_experts
    assert all(v.isfinite().all() for v in out.routing.stats.values())


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(masked: bool) -> None:
    layer = _layer(2, 2, seed=3)
    names = ["slots", "scale", "experts.gate_up_proj", "experts.down_proj"]
    params = dict(layer.named_parameters())
    x = torch.randn(2, 3, H, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]]) if masked else None

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,),
                                          {"attention_mask": mask}).hidden

    assert torch.autograd.gradcheck(f, (x, *(params[n].detach().requires_grad_() for n in names)))


@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(5, H), (2, 4, H), (2, 2, 3, H)])
def test_smoke(gate: str, normalize: bool, shape: tuple[int, ...]) -> None:
    layer = _layer(3, 2, gate=gate, normalize=normalize, dtype=torch.float32)
    x = torch.randn(shape, requires_grad=True)
    out = layer(x)
    n = math.prod(shape[:-1])
    assert out.hidden.shape == x.shape and out.hidden.isfinite().all()
    r = out.routing
    assert r.logits.shape == r.scores.shape == (n, 6) and r.logits.dtype == torch.float32
    assert r.indices.shape == r.weights.shape == (n, 3) and r.tokens_per_expert.dtype == torch.int64
    assert set(r.stats) == {"dispatch_entropy", "dispatch_max", "combine_entropy", "combine_max",
                            "expert_combine_mass"}
    assert out.aux_loss({"load_balance": 1.0}) == 0
    out.hidden.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in layer.parameters())


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="slots_per_expert=0"):
        SoftMoELayer(hidden=H, experts=Experts(2, H, INNER), slots_per_expert=0)
    with pytest.raises(ValueError, match="hidden=7"):
        SoftMoELayer(hidden=7, experts=Experts(2, H, INNER))
    layer = _layer(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"got shape \(2, 4, 5\)"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"got shape \(6,\)"):
        layer(torch.randn(H))
    with pytest.raises(ValueError, match=r"T >= 1\); got shape \(2, 0, 6\)"):
        layer(torch.randn(2, 0, H))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 4\); got \(2, 5\)"):
        layer(torch.randn(2, 4, H), attention_mask=torch.ones(2, 5))


def test_empty_batch_of_groups() -> None:
    """(0, T, H): no groups is an empty output, finite statistics, no error."""
    layer = SoftMoELayer(hidden=8, experts=Experts(4, 8, 6), slots_per_expert=2)
    x = torch.randn(0, 5, 8, requires_grad=True)
    out = layer(x)
    out.hidden.sum().backward()
    assert out.hidden.shape == (0, 5, 8) and out.routing.indices.shape == (0, 4)
    assert all(torch.isfinite(v).all() for v in out.routing.stats.values())


def test_input_of_another_dtype_is_a_clear_error() -> None:
    layer = SoftMoELayer(hidden=8, experts=Experts(4, 8, 6), slots_per_expert=1)
    with pytest.raises(ValueError, match="x is torch.bfloat16 but the layer's experts are torch.float32"):
        layer(torch.randn(2, 3, 8, dtype=torch.bfloat16))
