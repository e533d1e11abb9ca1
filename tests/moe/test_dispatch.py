"""Every dispatch path equals the per-token reference, forward and backward, for every router."""

import importlib

import pytest
import torch

from moescope.moe import (
    CosineRouter,
    DeepSeekV3Router,
    ExpertChoiceRouter,
    Experts,
    GptOssRouter,
    Llama4Router,
    MoELayer,
    SharedExpert,
    SwitchRouter,
    TopKRouter,
    dispatch,
    reference_dispatch,
)

H, I, E = 12, 10, 6
ROUTERS = {
    "topk": lambda: TopKRouter(H, E, 2),
    "topk_unnormalised": lambda: TopKRouter(H, E, 3, normalize_topk=False),
    "cosine": lambda: CosineRouter(H, E, 2),
    "switch": lambda: SwitchRouter(H, E, capacity_factor=0.8),
    "deepseek_v3": lambda: DeepSeekV3Router(H, E, 2, n_group=3, topk_group=2, routed_scaling_factor=2.0),
    "llama4": lambda: Llama4Router(H, E, 2),
    "gpt_oss": lambda: GptOssRouter(H, E, 2),
    "expert_choice": lambda: ExpertChoiceRouter(H, E, capacity_factor=1.5),
}
GATES = {"swiglu": {}, "gpt_oss": {"gate": "gpt_oss", "bias": True}, "none": {"gate": "none", "activation": "relu"}}


def _layer(router: str, gate: str, shared: bool, method: str, seed: int = 0) -> MoELayer:
    torch.manual_seed(seed)
    experts = Experts(E, H, I, **GATES[gate])
    if gate == "gpt_oss":
        with torch.no_grad():
            experts.gate_up_proj.mul_(20.0)  # push activations past the clamp limit
    return MoELayer(router=ROUTERS[router](), experts=experts, shared=SharedExpert(H, 8) if shared else None,
                    dispatch=method).double()


@pytest.mark.parametrize("router", list(ROUTERS))
@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("method", ["sorted", "loop", "bmm", "auto"])
def test_paths_equal_reference_forward_and_backward(router, gate, method):
    x = torch.randn(3, 5, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = {}
    outs = {}
    for m in ("reference", method):
        layer = _layer(router, gate, shared=False, method=m)
        xx = x.clone().requires_grad_()
        out = layer(xx).hidden
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs[m] = out.detach()
        grads[m] = [xx.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in layer.parameters()]
    torch.testing.assert_close(outs[method], outs["reference"], atol=1e-12, rtol=1e-12)
    for a, b in zip(grads[method], grads["reference"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("router", list(ROUTERS))
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("method", ["sorted", "loop", "bmm"])
def test_smoke_every_router_dispatch_shared(router, shared, method):
    layer = _layer(router, "swiglu", shared, method).float()
    out = layer(torch.randn(2, 4, H))
    assert out.hidden.shape == (2, 4, H) and torch.isfinite(out.hidden).all()
    r = out.routing
    assert r.logits.shape == (8, E) and r.scores.shape == (8, E) and r.indices.shape == r.weights.shape
    assert int(r.tokens_per_expert.sum()) == int((r.indices >= 0).sum())
    out.hidden.sum().backward()


def test_identical_experts_reproduce_one_expert():
    """With every expert equal and weights summing to one, routing cannot matter."""
    experts = Experts(E, H, I).double()
    with torch.no_grad():
        experts.gate_up_proj.copy_(experts.gate_up_proj[:1].expand_as(experts.gate_up_proj))
        experts.down_proj.copy_(experts.down_proj[:1].expand_as(experts.down_proj))
    layer = MoELayer(router=TopKRouter(H, E, 3).double(), experts=experts)
    x = torch.randn(7, H, dtype=torch.float64)
    # the router works in float32, so its weights sum to 1 only to ~1e-7
    torch.testing.assert_close(layer(x).hidden, experts.expert(0, x), atol=1e-7, rtol=1e-6)


def test_gradcheck_float64():
    layer = _layer("topk", "swiglu", shared=True, method="sorted")
    x = torch.randn(5, H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t).hidden, (x,))
    experts = layer.experts
    idx = torch.tensor([[0, 2], [1, -1], [2, 0], [5, 4]])
    w = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    xs = torch.randn(4, H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, g, d: dispatch(a, idx, b, experts),
                                    (xs, w, experts.gate_up_proj, experts.down_proj))


BIG_ROUTING = torch.tensor([[0, 1 + t % 5] for t in range(8)]).index_put_((torch.tensor([3]), torch.tensor([1])),
                                                                        torch.tensor(-1))


@pytest.mark.parametrize("idx", [torch.tensor([[0, 2], [1, -1], [2, 0], [5, 2]]), BIG_ROUTING],
                         ids=["rows-side", "weight-side"])
def test_gradcheck_float64_bmm(idx):
    """The padded-bmm path's hand-written backward, for every input, both weightings, with biases; with
    m = 2 rows per expert (GEMMs as rows·Wᵀ) and m = 8 (as W·rowsᵀ)."""
    from moescope.moe.padded import _WEIGHT_SIDE_ROWS

    most = int(torch.bincount(idx[idx >= 0]).max())
    assert (most >= _WEIGHT_SIDE_ROWS) == (idx is BIG_ROUTING)
    for gate, weight_input in (("swiglu", False), ("swiglu", True), ("gpt_oss", False), ("gpt_oss", True)):
        torch.manual_seed(0)
        experts = Experts(E, H, I, **GATES[gate]).double()
        with torch.no_grad():
            if experts.gate_up_bias is not None:
                experts.gate_up_bias.normal_()
                experts.down_bias.normal_()
        w = torch.rand(idx.shape, dtype=torch.float64, requires_grad=True)
        xs = torch.randn(idx.shape[0], H, dtype=torch.float64, requires_grad=True)
        params = list(experts.parameters())

        def f(a, b, *_, experts=experts, weight_input=weight_input):
            return dispatch(a, idx, b, experts, weight_input=weight_input, method="bmm")

        assert torch.autograd.gradcheck(f, (xs, w, *params))


def test_padded_layout_hand_derived():
    from moescope.moe.padded import _padded_layout

    # flat routing [0, 2, 1, -1, 2, 0] (T=3, k=2): expert 0 gets slots 0 and 5, expert 1 slot 2,
    # expert 2 slots 1 and 4; m = 2 rows per expert, so expert 1's second row is padding (slot 6 = T·k).
    slot, dest, order = _padded_layout(torch.tensor([[0, 2], [1, -1], [2, 0]]), 3)
    assert slot.tolist() == [0, 5, 2, 6, 1, 4]
    assert dest.tolist() == [0, 1, 2, 4, 5] and order.tolist() == [0, 5, 2, 1, 4]


def test_empty_slots_and_no_tokens():
    experts = Experts(E, H, I).double()
    x = torch.randn(3, H, dtype=torch.float64)
    idx = torch.full((3, 2), -1)
    w = torch.zeros(3, 2, dtype=torch.float64)
    for m in ("sorted", "loop", "bmm"):
        assert torch.equal(dispatch(x, idx, w, experts, method=m), torch.zeros_like(x))
        assert dispatch(x[:0], idx[:0], w[:0], experts, method=m).shape == (0, H)
    torch.testing.assert_close(dispatch(x, torch.tensor([[1, -1]] * 3), torch.ones(3, 2, dtype=torch.float64),
                                        experts), reference_dispatch(x, torch.tensor([[1, -1]] * 3),
                                                                     torch.ones(3, 2, dtype=torch.float64), experts))


@pytest.mark.parametrize("method", ["sorted", "bmm"])
def test_backward_without_pairs(method):
    """No valid slot: the output is zero yet still part of the graph, every gradient zero."""
    experts = Experts(E, H, I).double()
    x = torch.randn(3, H, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    dispatch(x, torch.full((3, 2), -1), w, experts, method=method).sum().backward()
    for t in (x, w, experts.gate_up_proj, experts.down_proj):
        assert torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "fast"}, "dispatch method must be one of"),
        ({"indices": torch.tensor([[E, 0]])}, "out of range"),
        ({"x": torch.randn(1, H + 1)}, r"x must have shape \(T, 12\)"),
        ({"weights": torch.ones(1, 3)}, "must both be"),
    ],
)
def test_dispatch_errors(kwargs, match):
    args = {"x": torch.randn(1, H), "indices": torch.tensor([[0, 1]]), "weights": torch.ones(1, 2),
            "experts": Experts(E, H, I)}
    method = kwargs.pop("method", "auto")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dispatch(**args, method=method)


def test_layer_rejects_mismatched_parts():
    with pytest.raises(ValueError, match="router has 4 experts"):
        MoELayer(router=TopKRouter(H, 4, 2), experts=Experts(E, H, I))
    with pytest.raises(ValueError, match="dispatch must be one of"):
        MoELayer(router=TopKRouter(H, E, 2), experts=Experts(E, H, I), dispatch="gpu")


@pytest.mark.parametrize("rows", [1, 2, 7])
@pytest.mark.parametrize(("router", "gate"), [("topk", "swiglu"), ("llama4", "swiglu"), ("gpt_oss", "gpt_oss"),
                                              ("switch", "none")])
def test_sorted_chunks_split_experts(monkeypatch, rows, router, gate):
    """Chunks of a few rows split experts across chunks; the result must not change."""
    d = importlib.import_module("moescope.moe.dispatch")  # the package re-exports a function of that name
    widest = max(2 * I if gate != "none" else I, H)
    monkeypatch.setattr(d, "_CHUNK_ELEMENTS", rows * widest)
    x = torch.randn(4, 5, H, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads, outs = {}, {}
    for m in ("reference", "sorted"):
        layer = _layer(router, gate, shared=False, method=m)
        xx = x.clone().requires_grad_()
        out = layer(xx).hidden
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs[m] = out.detach()
        grads[m] = [xx.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in layer.parameters()]
    torch.testing.assert_close(outs["sorted"], outs["reference"], atol=1e-12, rtol=1e-12)
    for a, b in zip(grads["sorted"], grads["reference"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


def test_sorted_chunk_plan():
    from moescope.moe.dispatch import _chunks

    # experts 0..3 with 3, 0, 5, 1 rows; 4 rows per chunk: expert 2 is split 2 + 3 (near-equal)
    assert _chunks([3, 0, 5, 1], 4) == [(0, 3, [0], [3]), (3, 5, [2], [2]), (5, 8, [2], [3]), (8, 9, [3], [1])]
    assert _chunks([1, 1, 1, 2], 3) == [(0, 3, [0, 1, 2], [1, 1, 1]), (3, 5, [3], [2])]
    assert _chunks([0, 0], 3) == []


@pytest.mark.parametrize("rows", [1, 16, 40, 64])
def test_mm_t_orientations(rows):
    from moescope.moe.dispatch import _mm_t

    a, w = torch.randn(rows, 12, dtype=torch.float64), torch.randn(9, 12, dtype=torch.float64)
    out = torch.empty(rows, 9, dtype=torch.float64)
    torch.testing.assert_close(_mm_t(a, w.T, out), a @ w.T, atol=1e-12, rtol=1e-12)


ROUTERS_16 = {"topk": lambda: TopKRouter(16, E, 2), "llama4": lambda: Llama4Router(16, E, 2),
              "gpt_oss": lambda: GptOssRouter(16, E, 2), "switch": lambda: SwitchRouter(16, E, capacity_factor=0.8)}


@pytest.mark.parametrize(("tokens", "rows"), [(7, None), (24, None), (24, 20), (24, 8)])
@pytest.mark.parametrize(("router", "gate"), [("topk", "swiglu"), ("llama4", "swiglu"), ("gpt_oss", "gpt_oss"),
                                              ("switch", "none")])
def test_sorted_grouped_mm_float32(monkeypatch, router, gate, tokens, rows):
    """float32 rows of whole 16-byte units send chunks with few rows per expert through
    F.grouped_mm (others through the per-expert loop, and ``rows`` per chunk mixes the two);
    forward and backward must agree with the loop alone and with the reference."""
    from unittest import mock

    d = importlib.import_module("moescope.moe.dispatch")
    if rows is not None:
        monkeypatch.setattr(d, "_CHUNK_ELEMENTS", rows * 16)
    x = torch.randn(3, tokens, 16, generator=torch.Generator().manual_seed(3))
    results = {}
    for name in ("grouped", "loop", "reference"):
        torch.manual_seed(0)
        layer = MoELayer(router=ROUTERS_16[router](), experts=Experts(E, 16, 8, **GATES[gate]),
                         dispatch="reference" if name == "reference" else "sorted")
        if name == "reference":
            layer = layer.double()
        xx = x.to(next(layer.parameters()).dtype).clone().requires_grad_()
        with monkeypatch.context() as m:
            if name == "loop":
                m.setattr(d, "_grouped_mm_ok", lambda *args: False)
            with mock.patch.object(torch.nn.functional, "grouped_mm", wraps=torch.nn.functional.grouped_mm) as spy:
                out = layer(xx).hidden
                (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        if name != "grouped" or tokens == 7 or rows == 8:   # few rows per expert in every chunk
            assert spy.called == (name == "grouped")
        results[name] = [out.detach(), xx.grad] + [p.grad if p.grad is not None else torch.zeros_like(p)
                                                   for p in layer.parameters()]
    for a, b, c in zip(results["grouped"], results["loop"], results["reference"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.double(), c, atol=1e-4, rtol=1e-4)


def test_auto_method_rule():
    """auto takes bmm only for enough, balanced rows in small buffers; the choice follows the counts."""
    from moescope.moe.dispatch import _BMM_MIN_MEAN_ROWS, _CHUNK_ELEMENTS, auto_method

    experts = Experts(4, 16, 8)                                        # widest buffer: 2I = H = 16 values a row
    balanced = torch.arange(4).repeat(_BMM_MIN_MEAN_ROWS).view(-1, 2)  # every expert 8 rows: S = 32 = E·m
    assert auto_method(balanced, experts) == "bmm"
    assert auto_method(balanced[1:], experts) == "sorted"               # a mean under 8 rows
    skewed = balanced.clone()
    skewed[:, 0] = 0                                                    # expert 0: 16 rows, m·E = 64 = 2·32
    assert auto_method(skewed, experts) == "bmm"
    skewed[:4, 1] = 0                                                   # expert 0: 16 + 4 rows, m·E = 80 > 2·32
    assert auto_method(skewed, experts) == "sorted"
    dropped = balanced.clone()
    dropped[0, 0] = -1                                                  # empty slots count for nothing
    assert auto_method(torch.cat([balanced, dropped]), experts) == "bmm"
    wide = Experts(4, 16, _CHUNK_ELEMENTS // (2 * 4 * _BMM_MIN_MEAN_ROWS) + 1)   # (E·m, 2I) over the chunk size
    assert auto_method(balanced, wide) == "sorted"


def test_auto_method_rule_in_bfloat16():
    """bfloat16 (and float32 weights under bfloat16 autocast): bmm wherever the widest padded buffer holds at most
    8 MiB, however few rows each expert got; sorted beyond it, and when no slot is routed."""
    from moescope.moe.dispatch import _BMM_BF16_BYTES, auto_method

    experts = Experts(4, 16, 8).to(torch.bfloat16)                     # widest buffer: 16 values = 32 bytes a row
    single = Experts(4, 16, 8)                                          # float32
    few = torch.tensor([[0, 1], [2, 3]])                                # 1 row each: float32 would take sorted
    assert auto_method(few, experts) == "bmm" and auto_method(few, single) == "sorted"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert auto_method(few, single) == "bmm"                       # the GEMMs run in autocast's dtype
    assert auto_method(torch.full((2, 2), -1), experts) == "sorted"     # nothing routed
    rows = _BMM_BF16_BYTES // (16 * 2 * 4)                              # m rows per expert fill exactly 8 MiB
    fits = torch.arange(4).repeat(rows).view(-1, 2)
    assert auto_method(fits, experts) == "bmm"
    over = torch.cat([fits, torch.zeros(1, 2, dtype=fits.dtype)])      # expert 0 one row more: E·m·32 > 8 MiB
    assert auto_method(over, experts) == "sorted"


@pytest.mark.parametrize("router", ["topk", "llama4", "gpt_oss"])
def test_auto_through_bmm_equals_reference(router):
    """Enough balanced rows that auto takes the padded bmm path (weight-side GEMMs): the layer still
    equals the per-token reference, forward and backward."""
    from moescope.moe.dispatch import auto_method

    x = torch.randn(4, 24, H, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gate = "gpt_oss" if router == "gpt_oss" else "swiglu"
    outs, grads = {}, {}
    for m in ("reference", "auto"):
        layer = _layer(router, gate, shared=False, method=m)
        if m == "auto":
            with torch.no_grad():
                routing = layer.router(x)
            assert auto_method(routing.indices, layer.experts) == "bmm"
        xx = x.clone().requires_grad_()
        out = layer(xx).hidden
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs[m], grads[m] = out.detach(), [xx.grad] + [p.grad for p in layer.parameters()]
    torch.testing.assert_close(outs["auto"], outs["reference"], atol=1e-12, rtol=1e-12)
    for a, b in zip(grads["auto"], grads["reference"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
