"""Steering (``moescope steer``): risk differences recounted from the recorder's raw choices, the
rewritten scores' guarantees (an activated expert is always chosen, a deactivated one never) on
softmax and on every sigmoid family the tiny checkpoints cover, the steered forward against a
plain-transformers oracle, the random control, refusals, and the command end to end."""

import json
import math
from contextlib import ExitStack, contextmanager
from functools import partial
from unittest import mock

import numpy as np
import pytest
import tiny_checkpoints
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from moescope.analysis.router_rewrite import rewriting_logits
from moescope.analysis.steering import (
    EPSILON,
    REFUSED,
    SteerConfig,
    SteeringError,
    activation_rates,
    check_steerable,
    risk_difference,
    sigmoid_rule,
    steer,
    steering,
)
from moescope.cli import app
from moescope.models import BY_MODEL_TYPE, BY_NAME, RoutingRecorder
from moescope.models.loading import load_moe_model
from moescope.models.streaming import stream_moe_model


def _family(tiny: str):
    return BY_NAME.get(tiny) or BY_MODEL_TYPE[tiny]


#: One tiny checkpoint per sigmoid-scored family (derived from the tiny checkpoints and the registry).
SIGMOID = sorted({_family(n).name: n for n in reversed(tiny_checkpoints.BUILDERS)
                  if _family(n).layout.scoring == "sigmoid" and _family(n).name not in REFUSED}.values())
#: What each sigmoid family's top-k reads, from its transformers router (family docstrings, "Not in the view"):
#: Llama 4 and Cohere2-MoE (sigmoid mode) the logits, Kolibri-1 the logits + selection bias, every other one
#: σ(logits) + selection bias.
SELECTS_ON = {"llama4": "z", "cohere2_moe": "z", "kolibri1": "z+b"}


def _sets(model, seed=0, windows=12, length=16):
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab // 2, (windows, length), generator=g),
            torch.randint(vocab // 2, vocab, (windows, length), generator=g))


def _choices(model, views, ids):
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        rec.set_batch(ids, torch.ones_like(ids))
        model(input_ids=ids)
        return rec.pop()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@contextmanager
def _oracle(view, experts, direction, eps=EPSILON):
    """Plain transformers, steered by the stated rule: while the router runs (a forward pre-hook and a
    forward hook on it), ``F.linear`` returns the first E-column output rewritten by hand below; the
    selection bias of σ-selecting routers is pinned at ±inf."""
    router = view.module.get_submodule(BY_NAME[view.family].hook)
    E, sign = view.num_experts, 1.0 if direction == "activate" else -1.0
    selects_on = SELECTS_ON.get(view.family, "sigmoid")
    b = torch.zeros(E) if view.selection_bias is None else view.selection_bias.clone()
    real, state = F.linear, {}

    def rewritten(*args, **kwargs):
        z = real(*args, **kwargs)
        if state["done"] or z.shape[-1] != E:
            return z
        state["done"], z = True, z.clone()
        if selects_on == "sigmoid":      # σ(z_e) + b_e = S = (max | min) of σ(z) + b ± ε, σ within [1e-6, 1 − 1e-6]
            s = z.sigmoid() + b
            S = (s.amax(-1) if sign > 0 else s.amin(-1)) + sign * eps
            for e in experts:
                z[..., e] = torch.logit((S - b[e]).clamp(1e-6, 1 - 1e-6))
        else:                            # z_e + b_e = (max | min) of z + b  ± ε (b = 0 for Llama 4)
            bb = b if selects_on == "z+b" else torch.zeros(E)
            s = z + bb
            S = (s.amax(-1) if sign > 0 else s.amin(-1)) + sign * eps
            for e in experts:
                z[..., e] = S - bb[e]
        return z

    def pre(module, args, kwargs=None):
        state["done"], state["patch"] = False, mock.patch.object(F, "linear", rewritten)
        state["patch"].start()

    def post(module, args, output):
        state["patch"].stop()

    handles = [router.register_forward_pre_hook(pre), router.register_forward_hook(post, always_call=True)]
    pinned = selects_on == "sigmoid" and view.selection_bias is not None
    try:
        if pinned:
            with torch.no_grad():
                view.selection_bias[experts] = sign * math.inf
        yield
    finally:
        for h in handles:
            h.remove()
        if pinned:
            with torch.no_grad():
                view.selection_bias.copy_(b)


def _experts_to_steer(view, record):
    """The expert the selection bias disfavours most (expert 0 without one) and the one chosen by the share of
    tokens closest to a half: both changes are then real, and the bias pin is exercised."""
    share = torch.stack([(record.indices == e).any(dim=1).float().mean() for e in range(view.num_experts)])
    low = 0 if view.selection_bias is None else int(view.selection_bias.argmin())
    return sorted({low, int((share - 0.5).abs().argmin())})


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_activation_rates_are_the_recorded_choices_recounted(saved, family):
    model, _, views = load_moe_model(saved(family))
    a, _ = _sets(model)
    rates = activation_rates(model, views, a, batch_size=5)   # batches split differently from the recount
    for rec in _choices(model, views, a):
        li = [v.index for v in views].index(rec.layer)
        per_token = rec.indices.view(a.shape[0], a.shape[1], -1)
        for e in range(views[li].num_experts):
            expected = (per_token == e).any(dim=-1).float().mean(dim=1).numpy()
            np.testing.assert_allclose(rates[:, li, e], expected, atol=1e-7)


def test_risk_difference_and_its_interval():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(40, 2, 4))
    b = rng.uniform(size=(30, 2, 4))
    a[:, 1, 2] += 0.5   # a planted difference on one cell
    delta, interval = risk_difference(a, b, draws=400)
    np.testing.assert_allclose(delta, a.mean(0) - b.mean(0))
    assert interval[1, 2, 0] > 0.3 and (interval[..., 0] <= delta).all() and (delta <= interval[..., 1]).all()
    assert (interval[0, :, 0] < 0).all() and (interval[0, :, 1] > 0).all()   # no difference planted: straddles 0
    _, few = risk_difference(a[:5], b[:5])
    assert np.isinf(few).all()   # under 10 windows a set gets no interval


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe"])
def test_activated_experts_are_always_chosen_and_deactivated_ones_never(saved, family):
    model, _, views = load_moe_model(saved(family))
    a, _ = _sets(model)
    before = _choices(model, views, a)
    cells = [(0, 1), (len(views) - 1, 6)]
    with steering(views, cells, "activate"):
        on = _choices(model, views, a)
    with steering(views, cells, "deactivate"):
        off = _choices(model, views, a)
    for li, e in cells:
        assert (on[li].indices == e).any(dim=1).all()
        assert not (off[li].indices == e).any()
        assert (before[li].indices == e).any() and not (before[li].indices == e).all()  # a real change
    after = _choices(model, views, a)
    for x, y in zip(before, after, strict=True):
        assert torch.equal(x.indices, y.indices)   # nothing left behind


def test_steer_links_experts_and_holds_them_against_random_ones(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    a, b = _sets(model, windows=24)
    res = steer(model, views, {"A": a, "B": b}, SteerConfig(top=3, random_draws=5, draws=200))
    for row in res["linked"]:
        assert row["interval"][0] > 0 and row["delta"] == pytest.approx(row["p_a"] - row["p_b"])
    deltas = [row["delta"] for row in res["linked"]]
    assert deltas == sorted(deltas, reverse=True) and len(deltas) <= 3
    if res["linked"]:
        for direction in ("activate", "deactivate"):
            for name in ("A", "B"):
                r = res["steering"][direction][name]
                assert len(r["random"]) == 5 and 2 / 6 <= r["p_value"] <= 1
                assert r["delta_loss"] == pytest.approx(np.mean(r["per_window"]))
    json.dumps(res, allow_nan=True)


@pytest.mark.parametrize("family", SIGMOID)
def test_sigmoid_steering_is_guaranteed_and_matches_a_plain_transformers_oracle(saved, family):
    model, _, views = load_moe_model(saved(family))
    a, _ = _sets(model, windows=6)
    plain = _logits(model, a)
    with steering(views, [], "activate"):
        assert torch.equal(_logits(model, a), plain)       # nothing steered: bit-identical
    before = _choices(model, views, a)
    cells = [(li, e) for li, v in enumerate(views) for e in _experts_to_steer(v, before[li])]
    changed = False
    for direction in ("activate", "deactivate"):
        with steering(views, cells, direction):
            steered, records = _logits(model, a), _choices(model, views, a)
        for li, e in cells:
            picked = (records[li].indices == e).any(dim=1)
            assert picked.all() if direction == "activate" else not picked.any(), (direction, li, e)
            was = (before[li].indices == e).any(dim=1)
            changed |= bool(~was.all()) if direction == "activate" else bool(was.any())
        with ExitStack() as stack:
            for li, v in enumerate(views):
                stack.enter_context(_oracle(v, [e for l2, e in cells if l2 == li], direction))
            torch.testing.assert_close(steered, _logits(model, a), rtol=1e-5, atol=1e-5)
    assert changed
    assert torch.equal(_logits(model, a), plain)           # nothing left behind: bias restored, hooks gone


@pytest.mark.slow
@pytest.mark.parametrize("family", SIGMOID)
def test_streamed_sigmoid_steering_equals_in_memory(saved, family):
    """A layer-streamed model keeps its selection bias on the meta device between forwards: the rule reads,
    and the pin edits, the bias the forward reads, so the steered model is the in-memory one."""
    model, _, views = load_moe_model(saved(family))
    streamed, _, streamed_views = stream_moe_model(saved(family))
    assert all(v.selection_bias is None or v.selection_bias.is_meta for v in streamed_views)
    a, _ = _sets(model, windows=4)
    before = _choices(model, views, a)
    cells = [(li, e) for li, v in enumerate(views) for e in _experts_to_steer(v, before[li])]
    for direction in ("activate", "deactivate"):
        with steering(views, cells, direction):
            expected, chosen = _logits(model, a), _choices(model, views, a)
        with steering(streamed_views, cells, direction):
            got, streamed_chosen = _logits(streamed, a), _choices(streamed, streamed_views, a)
        for x, y in zip(chosen, streamed_chosen, strict=True):
            assert torch.equal(x.indices, y.indices), f"{family} {direction}: other experts chosen when streamed"
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_logit_alone_cannot_keep_a_limited_group(saved):
    """DeepSeek-V3 keeps the 2 of 4 groups whose top-2 selection scores sum highest: an expert at the row's
    maximum selection score + ε can still lose its group, which is why steering pins its selection bias."""
    model, _, views = load_moe_model(saved("deepseek_v3"))
    a, _ = _sets(model, windows=6)
    view, li = views[-1], len(views) - 1
    shares = []
    for e in range(view.num_experts):
        rule = partial(sigmoid_rule, experts=[e], direction="activate", epsilon=EPSILON,
                       bias=view.selection_bias.clone())
        with rewriting_logits(view, rule, purpose="the test"):
            shares.append(float((_choices(model, views, a)[li].indices == e).any(dim=1).float().mean()))
        with steering(views, [(li, e)], "activate"):
            assert (_choices(model, views, a)[li].indices == e).any(dim=1).all()
    assert min(shares) < 1


def test_refused_routers_and_bad_requests(saved):
    model, _, views = load_moe_model(saved("laguna"))
    with pytest.raises(SteeringError, match=r"laguna \(sigmoid\): its router soft-caps the logits"):
        check_steerable(views)
    model, _, views = load_moe_model(saved("deepseek_v4"))
    with pytest.raises(SteeringError, match=r"deepseek_v4 \(sqrtsoftplus\): its first layers are hash-routed"):
        with steering(views, [(0, 1)], "activate"):
            pass
    model, _, views = load_moe_model(saved("mixtral"))
    a, _ = _sets(model)
    with pytest.raises(SteeringError, match="exactly two text sets; got 1"):
        steer(model, views, {"A": a})
    with pytest.raises(SteeringError, match="direction must be one of activate, deactivate; got 'boost'"):
        with steering(views, [(0, 1)], "boost"):
            pass
    with pytest.raises(SteeringError, match="expert 8 does not exist"):
        with steering(views, [(0, 8)], "activate"):
            pass
    with pytest.raises(ValueError, match="top must be >= 1"):
        SteerConfig(top=0)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_steer_command_end_to_end(saved, tmp_path, family):
    text_a = tmp_path / "a.txt"
    text_a.write_text("def add(a, b):\n    return a + b\n" * 40)
    text_b = tmp_path / "b.txt"
    text_b.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["steer", str(saved(family)), "--contrast", f"code={text_a}",
                                      "--contrast", f"prose={text_b}", "--seq-len", "8", "--max-windows", "12",
                                      "--random-draws", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved_json = json.loads((out / "results.json").read_text())
    assert saved_json["sets"] == ["code", "prose"] and "Risk difference" in (out / "report.html").read_text()
    assert saved_json["model"]["scoring"] == {"mixtral": "softmax", "deepseek_v3": "sigmoid"}[family]
    bad = CliRunner().invoke(app, ["steer", str(saved("mixtral")), "--contrast", f"code={text_a}"])
    assert bad.exit_code == 2 and "exactly two texts" in bad.output
