"""moescope layers equal the transformers reference blocks: same weights in, same outputs out."""

import random

import pytest
import torch
from hf_blocks import FAMILIES, H, deepseek_v3, qwen2_moe, qwen3_moe, switch

from moescope.moe import from_hf
from moescope.moe.lift import converters, register_converter
from moescope.moe.losses import load_balancing_loss


def _hf_choices(name, block, x):
    """The experts the reference block chose, as sorted (T, k) index sets (-1 = dropped)."""
    flat = x.reshape(-1, x.shape[-1])
    if name == "llama4":
        return torch.sort(block.router(flat)[1].topk(block.router.top_k, dim=-1).indices, -1).values
    if name == "gpt_oss":
        return torch.sort(block.router(flat)[2], -1).values
    if name == "switch":
        onehot = block.router(x)[0].reshape(-1, block.router.num_experts)
        return torch.where(onehot.any(-1), onehot.argmax(-1), -1).unsqueeze(-1)
    return torch.sort(block.gate(flat)[-1], -1).values


def _hidden(block, x):
    """The reference block's output, shaped like x."""
    with torch.no_grad():
        out = block(x)
    return (out[0] if isinstance(out, tuple) else out).reshape(x.shape)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("shape", [(2, 7), (1, 13), (4, 3)])
def test_same_outputs_and_same_choices(name, shape):
    block = FAMILIES[name](seed=sum(shape))
    layer = from_hf(block)
    x = torch.randn(*shape, H, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = block(x)
        ref = (ref[0] if isinstance(ref, tuple) else ref).reshape(x.shape)
        out = layer(x)
    torch.testing.assert_close(out.hidden, ref, atol=1e-5, rtol=1e-5)
    ours = torch.sort(out.routing.indices, -1).values
    assert torch.equal(ours, _hf_choices(name, block, x))


def _close(ours, ref, msg=None):
    """fp32 agreement relative to the reference's magnitude (wide layers with N(0, 0.3²) weights and
    GPT-OSS's clamp-test weights reach |y| ~ 100)."""
    torch.testing.assert_close(ours, ref, atol=1e-5 * max(1.0, float(ref.abs().max())), rtol=1e-5, msg=msg)


def _other_sizes(count: int, seed: int = 2026) -> list[tuple]:
    """Sizes the other tests never use, drawn once from a seeded generator: (family, hidden,
    intermediate, experts, top_k, batch, seq). Odd widths (no 16-byte rows: no grouped_mm), one
    expert, k = E, single tokens, and batches long enough for several chunks and the bmm path."""
    r = random.Random(seed)
    cases = []
    for i in range(count):
        name = list(FAMILIES)[i % len(FAMILIES)]
        experts = r.choice([1, 2, 3, 4, 16, 64]) if name != "deepseek_v3" else r.choice([2, 4, 16, 64])
        top_k = 1 if name in ("switch", "llama4") and r.random() < 0.5 else r.randint(1, min(experts, 8))
        cases.append((name, r.choice([8, 30, 130]), r.choice([4, 33, 96]), experts, 1 if name == "switch" else top_k,
                      *r.choice([(1, 1), (3, 17), (2, 300), (1, 1100)])))
    return cases


@pytest.mark.parametrize(("name", "hidden", "inter", "experts", "top_k", "batch", "seq"), _other_sizes(16))
def test_other_sizes_on_every_dispatch_path(name, hidden, inter, experts, top_k, batch, seq):
    block = FAMILIES[name](seed=seq, hidden=hidden, inter=inter, experts=experts, top_k=top_k)
    x = torch.randn(batch, seq, hidden, generator=torch.Generator().manual_seed(experts))
    ref = _hidden(block, x)
    layer = from_hf(block)
    for method in ("auto", "sorted", "loop", "bmm"):
        layer.dispatch = method
        with torch.no_grad():
            out = layer(x)
        _close(out.hidden, ref, msg=lambda m, method=method: f"{method}: {m}")
    assert torch.equal(torch.sort(out.routing.indices, -1).values, _hf_choices(name, block, x))


def _hf_router_weight(name, block):
    return {"llama4": lambda: block.router.weight, "gpt_oss": lambda: block.router.weight,
            "switch": lambda: block.router.classifier.weight}.get(name, lambda: block.gate.weight)()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_same_gradients_as_the_reference(name):
    """Input, router-weight and (stacked layouts) expert-weight gradients equal transformers' in
    training mode; Switch in eval mode, since its experts apply dropout when training."""
    block = FAMILIES[name](seed=11, experts=16, top_k=1 if name in ("switch", "llama4") else 4)
    layer = from_hf(block)
    for m in (block, layer):
        m.train(name != "switch")
    x = torch.randn(2, 40, H, generator=torch.Generator().manual_seed(12))
    g = torch.randn(2, 40, H, generator=torch.Generator().manual_seed(13))
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = block(x_ref)
    ((out[0] if isinstance(out, tuple) else out).reshape(x.shape) * g).sum().backward()
    (layer(x_ours).hidden * g).sum().backward()
    _close(x_ours.grad, x_ref.grad)
    _close(layer.router.weight.grad, _hf_router_weight(name, block).grad)
    if name in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"):      # (E, 2I, H) in both
        _close(layer.experts.gate_up_proj.grad, block.experts.gate_up_proj.grad)
        _close(layer.experts.down_proj.grad, block.experts.down_proj.grad)


def test_weights_are_copied_not_shared():
    block = FAMILIES["mixtral"]()
    layer = from_hf(block)
    with torch.no_grad():
        block.experts.gate_up_proj.zero_()
    assert layer.experts.gate_up_proj.abs().sum() > 0


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_block_gives_a_half_precision_layer_as_accurate_as_the_reference(name, dtype):
    """A bf16/fp16 checkpoint stays in its dtype; rounding differs from transformers' (other summation
    order), so both are held against the float32 block: ours may be off by at most 1.5x as much."""
    block32 = FAMILIES[name](seed=5)
    x32 = torch.randn(2, 9, H, generator=torch.Generator().manual_seed(3))
    truth = _hidden(block32, x32).double()
    block, x = FAMILIES[name](seed=5).to(dtype), x32.to(dtype)
    hf_error = (_hidden(block, x).double() - truth).abs().max()
    layer = from_hf(block)
    assert {p.dtype for p in layer.experts.parameters()} == {dtype}   # (Switch's router: float32, as in the block)
    with torch.no_grad():
        out = layer(x).hidden
    assert out.dtype == dtype
    eps = torch.finfo(dtype).eps * truth.abs().max()
    assert (out.double() - truth).abs().max() <= 1.5 * hf_error + eps


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bfloat16_gradients_as_accurate_as_the_reference(name):
    """Training in bfloat16: the input gradient is as far from the float32 block's as transformers' own
    bfloat16 backward is (1–9% relative here: routing flips near ties, in both alike)."""
    sizes = dict(seed=1, experts=16, top_k=1 if name in ("switch", "llama4") else 3)
    x = torch.randn(2, 50, H, generator=torch.Generator().manual_seed(8))
    g = torch.randn(2, 50, H, generator=torch.Generator().manual_seed(9))

    def input_grad(module, dtype):
        module.train(name != "switch")                 # Switch's experts apply dropout in training
        xx = x.to(dtype).detach().requires_grad_()
        out = module(xx)
        out = out.hidden if hasattr(out, "hidden") else (out[0] if isinstance(out, tuple) else out)
        (out.reshape(x.shape) * g.to(dtype)).sum().backward()
        return xx.grad.double()

    truth = input_grad(FAMILIES[name](**sizes), torch.float32)
    hf = input_grad(FAMILIES[name](**sizes).to(torch.bfloat16), torch.bfloat16)
    ours = input_grad(from_hf(FAMILIES[name](**sizes).to(torch.bfloat16)), torch.bfloat16)
    assert (ours - truth).norm() <= 1.1 * (hf - truth).norm() + 1e-3 * truth.norm()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bfloat16_weight_gradients_as_accurate_as_the_reference(name):
    """Training in bfloat16, the weights' side: the router weight's gradient, and every other weight's
    (experts, shared experts, biases) together, are as far from the float32 gradients as transformers'
    own bfloat16 backward's are. Each implementation is held against its own float32 gradients (the two
    agree to 1e-5: test_same_gradients_as_the_reference), so the layouts may differ (Llama 4 and GPT-OSS
    transposed, GPT-OSS interleaved, Switch one Linear per expert): a norm ignores the order of values."""
    sizes = dict(seed=1, experts=16, top_k=1 if name in ("switch", "llama4") else 3)
    x = torch.randn(2, 50, H, generator=torch.Generator().manual_seed(8))
    g = torch.randn(2, 50, H, generator=torch.Generator().manual_seed(9))

    def weight_grads(module, router_weight, dtype):
        """(router weight gradient, all other weights' gradients) flattened in float64; an expert that got
        no token has no gradient in transformers' loop and a zero one in ours: zeros alike."""
        module.train(name != "switch")                 # Switch's experts apply dropout in training
        out = module(x.to(dtype))
        out = out.hidden if hasattr(out, "hidden") else (out[0] if isinstance(out, tuple) else out)
        (out.reshape(x.shape) * g.to(dtype)).sum().backward()
        flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).double().flatten()
                for p in module.parameters() if p is not router_weight]
        return router_weight.grad.double().flatten(), torch.cat(flat)

    def errors(make):
        truth, half = make(torch.float32), make(torch.bfloat16)
        assert [t.numel() for t in truth] == [h.numel() for h in half]
        return [((h - t).norm(), t.norm(), t.numel()) for h, t in zip(half, truth, strict=True)]

    def hf(dtype):
        block = FAMILIES[name](**sizes).to(dtype)
        return weight_grads(block, _hf_router_weight(name, block), dtype)

    def ours(dtype):
        layer = from_hf(FAMILIES[name](**sizes).to(dtype))
        return weight_grads(layer, layer.router.weight, dtype)

    for part, (hf_err, hf_norm, n_hf), (our_err, our_norm, n_ours) in zip(("router", "other weights"), errors(hf),
                                                                          errors(ours), strict=True):
        assert n_ours == n_hf, f"{part}: {n_ours} weights in moescope, {n_hf} in transformers"
        torch.testing.assert_close(our_norm, hf_norm, rtol=1e-4, atol=0)   # the same float32 gradients
        assert our_err <= 1.1 * hf_err + 1e-3 * hf_norm, f"{part}: {our_err / hf_norm:.4f} vs {hf_err / hf_norm:.4f}"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_float64_block_gives_a_float64_layer(name):
    """float64 through and through; transformers rounds the router softmax (and Switch the whole
    router, its classifier cast to float32 by its own forward) to float32, hence 1e-5."""
    block = FAMILIES[name](seed=6).double()
    x = torch.randn(2, 9, H, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref = _hidden(block, x)          # first: transformers' Switch router recasts its classifier here
    layer = from_hf(block)
    with torch.no_grad():
        out = layer(x).hidden
    assert out.dtype == torch.float64 and layer.experts.gate_up_proj.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_input_of_another_dtype_is_a_clear_error():
    layer = from_hf(FAMILIES["mixtral"]())
    with pytest.raises(ValueError, match=r"x is torch.bfloat16 but the layer's experts are torch.float32"):
        layer(torch.randn(2, 3, H, dtype=torch.bfloat16))


@pytest.mark.parametrize("norm", [True, False])
def test_norm_topk_prob_both_ways(norm):
    for make in (qwen2_moe, qwen3_moe):
        block = make(norm_topk_prob=norm)
        layer = from_hf(block)
        x = torch.randn(2, 5, 32)
        with torch.no_grad():
            torch.testing.assert_close(layer(x).hidden, block(x), atol=1e-5, rtol=1e-5)
        assert layer.router.normalize_topk is norm
        weight_sums = layer(x).routing.weights.sum(-1)
        assert torch.allclose(weight_sums, torch.ones_like(weight_sums)) is norm


def test_deepseek_bias_and_groups_change_the_choice():
    """The non-zero correction bias and the group limit must matter, or the test proves little."""
    block = deepseek_v3()
    layer = from_hf(block)
    x = torch.randn(3, 6, 32)
    with torch.no_grad():
        chosen = layer(x).routing.indices
        # unbiased, ungrouped top-k of the sigmoid scores
        scores = torch.sigmoid(x.reshape(-1, 32) @ layer.router.weight.t())
        plain = scores.topk(layer.router.top_k, dim=-1).indices
    assert not torch.equal(torch.sort(chosen, -1).values, torch.sort(plain, -1).values)


def test_switch_capacity_drops_tokens_like_the_reference():
    block = switch(expert_capacity=1)
    layer = from_hf(block)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(0))   # not the global RNG: any test order
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out.hidden, block(x), atol=1e-5, rtol=1e-5)
    dropped = out.routing.indices[:, 0] < 0
    # 9 tokens, 8 experts of capacity 1 per sequence: at least one token of each sequence is dropped
    assert out.routing.stats["drop_rate"] == pytest.approx(float(dropped.float().mean())) and dropped.sum() >= 2
    assert torch.all(out.hidden.reshape(-1, 32)[dropped] == 0)  # no expert output: residual carries them


@pytest.mark.parametrize("with_mask", [False, True])
def test_hf_convention_equals_load_balancing_loss_func(with_mask):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    g = torch.Generator().manual_seed(3)
    batch, seq, experts, k, layers = 3, 5, 8, 2, 4
    logits = tuple(torch.randn(batch * seq, experts, generator=g) for _ in range(layers))
    mask = (torch.rand(batch, seq, generator=g) > 0.3).long() if with_mask else None
    ref = load_balancing_loss_func(logits, experts, k, mask)
    probs = [torch.softmax(lg, -1) for lg in logits]
    ours = load_balancing_loss(probs, [p.topk(k, -1).indices for p in probs], convention="hf", attention_mask=mask)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_unsupported_block_is_a_clear_error():
    with pytest.raises(TypeError, match=r"from_hf does not know Linear; supported blocks: .*MixtralSparseMoeBlock"):
        from_hf(torch.nn.Linear(3, 3))
    assert len(converters()) >= 8


def test_from_hf_of_the_package_is_the_function():
    """``from moescope.moe import from_hf`` is the converter, not a module (the README's usage)."""
    import moescope.moe

    assert callable(moescope.moe.from_hf) and moescope.moe.from_hf.__module__ == "moescope.moe.lift"
    block = FAMILIES["mixtral"]()
    layer = moescope.moe.from_hf(block)
    x = torch.randn(2, 3, H, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x).hidden, _hidden(block, x), atol=1e-5, rtol=1e-5)


def test_converters_are_registered_by_the_families():
    """Every family with a converter registers it for each of its block classes; a second,
    different converter for a registered class is refused."""
    from moescope.models.families import FAMILIES as REGISTRY

    table = converters()
    for family in REGISTRY:
        for block in family.blocks:
            if family.from_hf is not None and isinstance(block, str):
                assert table[block] is family.from_hf
    register_converter("MixtralSparseMoeBlock", table["MixtralSparseMoeBlock"])  # the same one again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_converter("MixtralSparseMoeBlock", lambda block: block)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_autocast_bfloat16_as_accurate_as_the_reference(name):
    """Mixed precision, the lab's ``--dtype bfloat16``: a float32 block run under torch.autocast(bfloat16). The
    output and the input gradient are as far from the float32 run's as transformers' own block under the same
    autocast (its F.linear GEMMs autocast; ours cast the custom paths' operands), the output keeps the input's
    dtype, and every weight gradient reaches the float32 parameters. Every dispatch path alike."""
    sizes = dict(seed=1, experts=16, top_k=1 if name in ("switch", "llama4") else 3)
    x = torch.randn(2, 50, H, generator=torch.Generator().manual_seed(8))
    g = torch.randn(2, 50, H, generator=torch.Generator().manual_seed(9))

    def run(module, autocast, **kwargs):
        module.train(name != "switch")                 # Switch's experts apply dropout in training
        xx = x.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(xx, **kwargs)
        out = out.hidden if hasattr(out, "hidden") else (out[0] if isinstance(out, tuple) else out)
        (out.reshape(x.shape).float() * g).sum().backward()
        return out.detach().reshape(x.shape).double(), xx.grad.double(), out.dtype

    truth = run(FAMILIES[name](**sizes), False)
    try:
        hf = run(FAMILIES[name](**sizes), True)
    except RuntimeError as err:                        # transformers' block itself fails under autocast
        pytest.skip(f"transformers' {name} block does not run under CPU autocast: {err}")
    for method in ("sorted", "bmm", "loop"):
        layer = from_hf(FAMILIES[name](**sizes))
        layer.dispatch = method
        *ours, dtype = run(layer, True)
        assert dtype == torch.float32                  # the residual stream keeps its dtype
        for part, o, h, t in zip(("output", "input gradient"), ours, hf[:2], truth[:2], strict=True):
            assert (o - t).norm() <= 1.1 * (h - t).norm() + 1e-3 * t.norm(), (method, part)
        grads = [p.grad for p in layer.parameters() if p.requires_grad]
        assert all(gr is None or gr.dtype == torch.float32 for gr in grads) and any(gr is not None for gr in grads)
