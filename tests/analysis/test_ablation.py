"""Expert ablation (``moescope.analysis.ablation``) against oracles written with plain transformers/torch.

* re-route: the family's router ``forward`` is replaced, for one layer, by a copy of transformers'
  routing math (read from ``modeling_<family>.py``) with expert *e*'s selection score set to −∞
  before scoring; the same copy without the mask must reproduce the intact model bit for bit.
* zero: a second copy of the checkpoint, loaded with ``AutoModelForCausalLM`` directly, whose
  state dict has expert *e*'s down projection (and GPT-OSS's down bias) set to zero.
* the residual cache: ``ablate`` against whole forwards with the intervention, and its cost.
"""

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moescope.analysis.ablation import AblationConfig, ablate
from moescope.analysis.interventions import attribution, reroute, zero
from moescope.analysis.window_loss import AblationError, window_losses
from moescope.models.adapters import find_moe_layers
from moescope.models.loading import load_moe_model
from moescope.stats import BOOTSTRAP_MIN_N

W, T = 6, 12  # windows, tokens per window


def _load(path: Path):
    model, _, views = load_moe_model(path)
    return model, views


def _ids(model, seed: int = 0, windows: int = W, tokens: int = T) -> torch.Tensor:
    vocab = model.get_output_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (windows, tokens), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(W,) float64 mean next-token negative log-likelihood, computed here in float64."""
    lp = logits.double().log_softmax(-1)[:, :-1]
    return -lp.gather(-1, ids[:, 1:, None]).squeeze(-1).mean(dim=1)


def _decoder_layer(view) -> int:
    return int(re.search(r"layers\.(\d+)\.", view.name).group(1))


@contextmanager
def _patched(module: torch.nn.Module, forward: Callable) -> Iterator[None]:
    """``module.forward`` replaced by ``forward`` (an instance attribute) for the block."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@contextmanager
def _indices(router: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The (tokens, k) expert indices every call of ``router`` returns (transformers' routers return
    ``(logits, weights, indices)``)."""
    got: list[torch.Tensor] = []
    handle = router.register_forward_hook(lambda m, a, out: got.append(out[2].detach().clone()))
    try:
        yield got
    finally:
        handle.remove()


# --------------------------------------------------------------------------- oracle routers
# Each reproduces transformers 5's ``<Family>TopKRouter.forward`` with expert ``e``'s selection score −∞
# (``e=None``: unchanged).

def _mixtral_router(router, e: int | None):
    def forward(hidden_states):
        h = hidden_states.reshape(-1, router.hidden_dim)
        logits = F.linear(h, router.weight)
        if e is not None:
            logits = logits.clone()
            logits[:, e] = -math.inf
        probs = F.softmax(logits.float(), dim=-1)
        top, idx = torch.topk(probs, router.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        return logits, top, idx

    return forward


def _qwen2_moe_router(router, e: int | None):
    def forward(hidden_states):
        h = hidden_states.reshape(-1, router.hidden_dim)
        logits = F.linear(h, router.weight)
        if e is not None:
            logits = logits.clone()
            logits[:, e] = -math.inf
        probs = F.softmax(logits, dtype=torch.float, dim=-1)
        top, idx = torch.topk(probs, router.top_k, dim=-1)
        if router.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, top.to(logits.dtype), idx

    return forward


def _deepseek_v3_router(router, e: int | None, logit_only: bool = False):
    """``logit_only``: mask the logit but leave the selection bias (the wrong ablation, for contrast)."""
    def forward(hidden_states):
        h = hidden_states.view(-1, router.hidden_dim)
        logits = F.linear(h.float(), router.weight.float())
        if e is not None and logit_only:
            logits = logits.clone()
            logits[:, e] = -math.inf
        scores = logits.sigmoid()
        choice = scores + router.e_score_correction_bias
        if e is not None and not logit_only:
            choice = choice.clone()
            choice[:, e] = -math.inf
        G, E = router.num_group, router.num_experts
        group_scores = choice.view(-1, G, E // G).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
        choice = choice.masked_fill(~score_mask.bool(), -math.inf)
        idx = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, idx)
        if router.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return logits, weights * router.routed_scaling_factor, idx

    return forward


def _gpt_oss_router(router, e: int | None):
    def forward(hidden_states):
        logits = F.linear(hidden_states, router.weight, router.bias)
        if e is not None:
            logits = logits.clone()
            logits[:, e] = -math.inf
        top, idx = torch.topk(logits, router.top_k, dim=-1)
        return logits, F.softmax(top, dim=1, dtype=top.dtype), idx

    return forward


ORACLES = {"mixtral": ("gate", _mixtral_router), "qwen2_moe": ("gate", _qwen2_moe_router),
           "deepseek_v3": ("gate", _deepseek_v3_router), "gpt_oss": ("router", _gpt_oss_router)}


# --------------------------------------------------------------------------- re-route

@pytest.mark.parametrize(("family", "layer"), [("mixtral", 0), ("qwen2_moe", 1), ("deepseek_v3", 0), ("gpt_oss", 0)])
def test_reroute_equals_transformers_oracle(family, layer, saved):
    model, views = _load(saved(family))
    view = next(v for v in views if v.index == layer)
    attr, oracle = ORACLES[family]
    router = getattr(view.module, attr)
    E = view.num_experts
    ids = _ids(model)

    with _indices(router) as got:
        intact = _logits(model, ids)
    chosen = torch.cat(got)
    if view.selection_bias is not None:  # the expert the bias favours most: masking its logit alone is not enough
        e = int(view.selection_bias.argmax())
    else:
        e = int(torch.bincount(chosen.flatten(), minlength=E).argmax())
    assert (chosen == e).any(), "the ablated expert must be used by the intact model"

    # the oracle without a mask is transformers' own router, bit for bit
    with _patched(router, oracle(router, None)):
        assert torch.equal(_logits(model, ids), intact)

    with _patched(router, oracle(router, e)), _indices(router) as got:
        expected = _logits(model, ids)
    assert not (torch.cat(got) == e).any()
    assert not torch.allclose(expected, intact, atol=1e-4)  # the ablation changes the output

    bias_before = None if view.selection_bias is None else view.selection_bias.clone()
    with reroute(view, e), _indices(router) as got:
        ablated = _logits(model, ids)
        losses = window_losses(model, ids)
    assert len(got) == 2 and not (torch.cat(got) == e).any()
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=0)
    assert losses.dtype == torch.float64 and losses.shape == (W,)
    np.testing.assert_allclose(losses.numpy(), _nll(expected, ids).numpy(), atol=1e-5, rtol=0)

    # everything is back afterwards: hooks, selection bias, the outputs
    assert not router._forward_hooks and not router._forward_pre_hooks
    if bias_before is not None:
        assert torch.equal(view.selection_bias, bias_before)
        assert torch.equal(router.e_score_correction_bias, bias_before)
    assert torch.equal(_logits(model, ids), intact)


def test_deepseek_reroute_needs_the_selection_bias(saved):
    """Contrast for the oracle above: masking only the logit (sigmoid → 0) still lets the bias pick the expert."""
    model, views = _load(saved("deepseek_v3"))
    view = views[0]
    router = view.module.gate
    e = int(view.selection_bias.argmax())
    assert view.selection_bias[e] > 0.5
    ids = _ids(model)
    with _patched(router, _deepseek_v3_router(router, e, logit_only=True)), _indices(router) as got:
        logit_only = _logits(model, ids)
    assert (torch.cat(got) == e).any()
    with reroute(view, e):
        ablated = _logits(model, ids)
    assert not torch.allclose(ablated, logit_only, atol=1e-4)


def test_window_losses_is_mean_next_token_nll(saved):
    model, _ = _load(saved("mixtral"))
    ids = _ids(model, seed=3)
    got = window_losses(model, ids)
    np.testing.assert_allclose(got.numpy(), _nll(_logits(model, ids), ids).numpy(), atol=1e-5, rtol=0)
    # a window's loss does not depend on the others in the batch
    np.testing.assert_allclose(window_losses(model, ids[2:3]).numpy(), got[2:3].numpy(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- zero

DOWN = {"mixtral": ("down_proj",), "gpt_oss": ("down_proj", "down_proj_bias")}


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
@pytest.mark.parametrize("layer", [0, 1])
def test_zero_equals_state_dict_oracle(family, layer, saved):
    from transformers import AutoModelForCausalLM

    path = saved(family)
    model, views = _load(path)
    view = views[layer]
    router = view.module.gate if family == "mixtral" else view.module.router
    ids = _ids(model, seed=1)
    with _indices(router) as got:
        intact = _logits(model, ids)
    e = int(torch.bincount(torch.cat(got).flatten(), minlength=view.num_experts).argmax())

    # the oracle: a second copy from transformers alone, expert e's down projection (and bias) zero in its state dict
    copy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert torch.equal(_logits(copy, ids), intact)
    prefix = f"model.layers.{_decoder_layer(view)}.mlp.experts."
    state = {k: v.clone() for k, v in copy.state_dict().items()}
    for name in DOWN[family]:
        assert state[prefix + name].shape[0] == view.num_experts
        state[prefix + name][e] = 0.0
    copy.load_state_dict(state)
    expected = _logits(copy, ids)
    assert not torch.allclose(expected, intact, atol=1e-4)

    params = dict(view.module.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    with zero(view, e):
        for name in DOWN[family]:
            p = params["experts." + name]
            assert (p[e] == 0).all()
            others = [i for i in range(view.num_experts) if i != e]
            assert torch.equal(p[others], before["experts." + name][others])
        ablated = _logits(model, ids)
        losses = window_losses(model, ids)
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(losses.numpy(), _nll(expected, ids).numpy(), atol=1e-5, rtol=0)
    for n, p in params.items():
        assert torch.equal(p, before[n]), n
    assert torch.equal(_logits(model, ids), intact)

    if family == "gpt_oss":  # the down bias matters: zeroing the weight alone is a different model
        state[prefix + "down_proj_bias"][e] = before["experts.down_proj_bias"][e]
        copy.load_state_dict(state)
        assert not torch.allclose(_logits(copy, ids), ablated, atol=1e-4)


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_dead_expert_has_zero_delta(family, saved):
    model, views = _load(saved(family))
    e = 5
    with torch.no_grad():
        for view in views:
            for name, p in view.module.experts.named_parameters():
                if name.startswith("down_proj"):
                    p[e] = 0.0
    ids = _ids(model, seed=2, windows=BOOTSTRAP_MIN_N)
    res = ablate(model, views, {"a": ids, "b": ids[:3]}, AblationConfig(modes=("zero",), experts=(e,), draws=200,
                                                                          batch_size=4))
    assert res.layers == [0, 1] and res.experts == [e]
    for d, n in (("a", BOOTSTRAP_MIN_N), ("b", 3)):
        assert res.delta["zero"][d].shape == (2, 1, n)
        assert (res.delta["zero"][d] == 0.0).all()
        assert res.intervals["zero"][d].shape == (2, 1, 2)
    assert (res.intervals["zero"]["a"] == 0.0).all()
    assert (res.intervals["zero"]["b"] == [-math.inf, math.inf]).all()  # too few windows for a bootstrap interval


# --------------------------------------------------------------------------- the residual cache

@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss"])
def test_cache_changes_nothing(family, saved):
    model, views = _load(saved(family))
    last = views[-1]
    L = model.config.num_hidden_layers
    assert _decoder_layer(last) == L - 1 >= 1  # layers below it are replayed from the cache
    ids = _ids(model, seed=4)
    experts = (0, 3, 7)
    first, top = model.model.layers[0], model.model.layers[L - 1]
    calls = {"first": 0, "top": 0}

    def count(key):
        def hook(*args):
            calls[key] += 1
        return hook

    handles = [first.register_forward_hook(count("first")), top.register_forward_hook(count("top"))]
    steps = []
    try:
        res = ablate(model, views, {"d": ids}, AblationConfig(layers=(last.index,), experts=experts, draws=100,
                                                              batch_size=4), on_step=lambda *a: steps.append(a))
    finally:
        for h in handles:
            h.remove()
    n = len(experts) * 2  # ablations (experts × modes)
    # every forward runs the top layer; the 2 batches of each ablation skip layer 0 (replayed from the cache)
    assert calls["top"] - calls["first"] == n * 2
    assert model.model.layers[0] is first and not model.training

    chunks = ids.split(4)  # the same batches, so that the comparison is exact
    base = torch.cat([window_losses(model, c) for c in chunks]).numpy()
    np.testing.assert_allclose(res.base["d"], base, atol=1e-6, rtol=0)
    for mode, intervene in (("reroute", reroute), ("zero", zero)):
        for i, e in enumerate(experts):
            with intervene(last, e):
                full = torch.cat([window_losses(model, c) for c in chunks]).numpy()
                whole = window_losses(model, ids).numpy()  # one batch of all windows
            np.testing.assert_allclose(res.delta[mode]["d"][0, i], full - base, atol=1e-6, rtol=0)
            np.testing.assert_allclose(res.delta[mode]["d"][0, i], whole - base, atol=1e-5, rtol=0)
    assert np.abs(res.delta["reroute"]["d"]).max() > 1e-4  # the ablations did something

    assert steps == [(i + 1, n) for i in range(n)]
    assert res.naive_cost == 1 + n
    assert res.cost == pytest.approx(1 + n * (L - _decoder_layer(last)) / L)
    assert res.cost < res.naive_cost


def test_cost_over_all_layers(saved):
    model, views = _load(saved("mixtral"))
    ids = _ids(model, seed=5, windows=3)
    res = ablate(model, views, {"d": ids}, AblationConfig(experts=(1, 2), draws=100))
    L = model.config.num_hidden_layers
    expected = 1 + sum(2 * 2 * (L - _decoder_layer(v)) / L for v in views)
    assert res.cost == pytest.approx(expected) and expected == pytest.approx(1 + 4 * (1 + 0.5))
    assert res.naive_cost == 1 + 2 * 2 * 2
    for mode in ("reroute", "zero"):
        assert res.delta[mode]["d"].shape == (2, 2, 3)
        assert res.mean(mode, "d").shape == (2, 2)
        lo, hi = res.intervals[mode]["d"][..., 0], res.intervals[mode]["d"][..., 1]
        assert (lo <= res.mean(mode, "d") + 1e-12).all() and (res.mean(mode, "d") <= hi + 1e-12).all()
    # layer 0 (no replay) against a whole forward
    with reroute(views[0], 2):
        full = window_losses(model, ids).numpy()
    np.testing.assert_allclose(res.delta["reroute"]["d"][0, 1], full - res.base["d"], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- first-order attribution

@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_attribution_is_minus_the_derivative_of_the_loss(family, saved):
    """attribution = −dL/dα, L the mean window loss with expert e's down projection (and GPT-OSS's down
    bias) scaled by α, at α = 1. Oracles: (a) torch.autograd.grad of the loss computed here with respect to
    the stacked down parameters, −Σ grad[e]·param[e]; (b) a central finite difference in α (coarse: the
    families' routers and norms compute in float32 even in a float64 model)."""
    model, _ = _load(saved(family))
    model = model.double()
    model.set_experts_implementation("eager")  # grouped_mm has no float64 kernel
    views = find_moe_layers(model)  # the views of the float64 parameters
    ids = _ids(model, seed=6, windows=5)
    experts = [1, 5]
    got = attribution(model, views, experts, ids, batch_size=3)
    assert got.shape == (len(views), len(experts))
    assert np.abs(got).max() > 1e-3
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # flags restored, no grads left

    def down(view):
        return [p for n, p in view.module.experts.named_parameters() if n.startswith("down_proj")]

    params = [p for view in views for p in down(view)]
    grads = dict(zip(map(id, params), torch.autograd.grad(_nll(model(input_ids=ids).logits, ids).mean(), params),
                     strict=True))
    grads = {k: g.detach() for k, g in grads.items()}

    def loss(view, e, alpha):
        rows = [p[e].detach().clone() for p in down(view)]
        with torch.no_grad():
            for p in down(view):
                p[e] *= alpha
            value = float(_nll(_logits(model, ids), ids).mean())
            for p, r in zip(down(view), rows, strict=True):
                p[e] = r
        return value

    h = 1e-3
    for li, view in enumerate(views):
        for ei, e in enumerate(experts):
            exact = -sum(float((grads[id(p)][e] * p[e].detach()).sum()) for p in down(view))
            assert got[li, ei] == pytest.approx(exact, rel=1e-6, abs=1e-10), (view.name, e)
            fd = -(loss(view, e, 1 + h) - loss(view, e, 1 - h)) / (2 * h)
            assert got[li, ei] == pytest.approx(fd, rel=2e-2, abs=2e-4), (view.name, e)


def test_exact_cells_are_the_top_by_attribution(saved):
    model, views = _load(saved("mixtral"))
    domains = {"a": _ids(model, seed=7, windows=4), "b": _ids(model, seed=8, windows=3)}
    experts = (0, 1, 2, 3)
    res = ablate(model, views, domains, AblationConfig(experts=experts, exact_limit=3, top=2, draws=100))
    expected = set()
    for d in domains:
        np.testing.assert_allclose(res.attribution[d], attribution(model, views, list(experts), domains[d], 8),
                                   rtol=1e-6, atol=1e-9)
        flat = np.argsort(-res.attribution[d], axis=None)[:2]
        expected |= {tuple(int(i) for i in np.unravel_index(f, res.attribution[d].shape)) for f in flat}
    assert res.measured == sorted(expected) and 2 <= len(res.measured) <= 4
    L = model.config.num_hidden_layers
    for mode in ("reroute", "zero"):
        for d in domains:
            for li in range(2):
                for ei in range(len(experts)):
                    measured = (li, ei) in expected
                    assert np.isfinite(res.delta[mode][d][li, ei]).all() == measured
                    assert np.isnan(res.delta[mode][d][li, ei]).all() != measured
                    assert np.isnan(res.intervals[mode][d][li, ei]).all() != measured
    assert res.naive_cost == 1 + 2 * len(expected)
    assert res.cost == pytest.approx(1 + sum(2 * (L - _decoder_layer(views[li])) / L for li, _ in expected))
    # the measured cells against whole forwards
    li, ei = res.measured[0]
    with zero(views[li], experts[ei]):
        full = window_losses(model, domains["a"]).numpy()
    np.testing.assert_allclose(res.delta["zero"]["a"][li, ei], full - res.base["a"], atol=1e-6, rtol=0)

    every = ablate(model, views, domains, AblationConfig(experts=experts, exact="all", exact_limit=3, top=2,
                                                         draws=100))
    assert len(every.measured) == 8 and all(np.isfinite(v).all() for per in every.delta.values()
                                            for v in per.values())
    for li, ei in res.measured:
        np.testing.assert_array_equal(every.delta["reroute"]["a"][li, ei], res.delta["reroute"]["a"][li, ei])


def test_training_mode_is_restored(saved):
    model, views = _load(saved("mixtral"))
    model.train()
    ablate(model, views, {"d": _ids(model, windows=2)}, AblationConfig(layers=(1,), experts=(0,), draws=100))
    assert model.training


# --------------------------------------------------------------------------- bad input

def test_bad_layer_expert_and_domains(saved):
    model, views = _load(saved("mixtral"))
    ids = _ids(model, windows=2)
    with pytest.raises(AblationError, match=r"\[5\]"):
        ablate(model, views, {"d": ids}, AblationConfig(layers=(5,)))
    with pytest.raises(AblationError, match=r"\[8\]"):
        ablate(model, views, {"d": ids}, AblationConfig(experts=(8,)))
    with pytest.raises(AblationError, match=r"\[-1\]"):
        ablate(model, views, {"d": ids}, AblationConfig(experts=(-1,)))
    with pytest.raises(AblationError, match="no domains"):
        ablate(model, views, {}, AblationConfig())
    with pytest.raises(AblationError, match="'short'"):
        ablate(model, views, {"short": ids[:, :1]}, AblationConfig())
    with pytest.raises(AblationError, match="'flat'"):
        ablate(model, views, {"flat": ids[0]}, AblationConfig())
    for bad in (8, -1, True, 1.0):
        for intervene in (reroute, zero):
            with pytest.raises(AblationError, match=re.escape(repr(bad))), intervene(views[0], bad):
                pass
    with pytest.raises(AblationError, match="no live module"), reroute(replace(views[0], module=None), 0):
        pass
    with pytest.raises(ValueError, match="modes"):
        AblationConfig(modes=("drop",))
    with pytest.raises(ValueError, match="batch_size"):
        AblationConfig(batch_size=0)
    assert issubclass(AblationError, ValueError)


def test_ids_outside_the_vocabulary_are_refused(saved):
    model, views = _load(saved("mixtral"))
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = _ids(model, windows=2)
    ids[0, 3] = vocab
    with pytest.raises(AblationError, match=rf"\[0, {vocab}\).*{vocab}\]"):
        ablate(model, views, {"d": ids}, AblationConfig(experts=(0,), draws=100))
    with pytest.raises(AblationError, match=str(vocab)):
        window_losses(model, ids)
    ids[0, 3] = -1
    with pytest.raises(AblationError, match=r"\[-1, "):
        window_losses(model, ids)


def test_encoder_decoder_is_refused(saved):
    model, views = _load(saved("switch_transformers"))
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(AblationError, match=type(model).__name__):
        ablate(model, views, {"d": ids}, AblationConfig(experts=(0,)))


# --------------------------------------------------------------------------- restoration on error

class _Boom(RuntimeError):
    pass


def _raise(*args):
    raise _Boom("boom")


def test_reroute_restores_on_error(saved):
    model, views = _load(saved("deepseek_v3"))
    view = views[0]
    router = view.module.gate
    ids = _ids(model)
    intact = _logits(model, ids)
    bias = view.selection_bias.clone()
    e = 3
    # raises after the router ran (in the experts)
    handle = view.module.experts.register_forward_pre_hook(_raise)
    try:
        with pytest.raises(_Boom), reroute(view, e):
            assert torch.equal(view.selection_bias, bias)  # the forward reads an edited copy; the model is not written
            _logits(model, ids)
    finally:
        handle.remove()
    assert torch.equal(router.e_score_correction_bias, bias)
    assert not router._forward_hooks and not router._forward_pre_hooks
    assert not view.module._forward_hooks and not view.module._forward_pre_hooks
    assert torch._C._len_torch_function_stack() == 0

    # raises inside the router, after its linear map: the masking mode is left too
    def half(hidden_states):
        F.linear(hidden_states.view(-1, router.hidden_dim), router.weight)
        raise _Boom("half")

    with _patched(router, half), pytest.raises(_Boom), reroute(view, e):
        _logits(model, ids)
    assert torch._C._len_torch_function_stack() == 0
    assert torch.equal(router.e_score_correction_bias, bias)
    assert not router._forward_hooks and not router._forward_pre_hooks
    out = F.linear(torch.ones(2, view.hidden), router.weight)
    assert torch.isfinite(out).all()
    assert torch.equal(_logits(model, ids), intact)


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_zero_restores_on_error(family, saved):
    model, views = _load(saved(family))
    view = views[1]
    ids = _ids(model)
    intact = _logits(model, ids)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = model.lm_head.register_forward_pre_hook(_raise)
    try:
        with pytest.raises(_Boom), zero(view, 4):
            _logits(model, ids)
    finally:
        handle.remove()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert torch.equal(_logits(model, ids), intact)


# --------------------------------------------------------------------------- a router without a linear map

def test_router_without_linear_map_is_refused(saved):
    model, views = _load(saved("mixtral"))
    view = views[0]
    router = view.module.gate
    W_r = router.weight.detach().clone()

    def elementwise(hidden_states):  # the same logits, but from a broadcast product and a sum: no linear map
        h = hidden_states.reshape(-1, router.hidden_dim)
        logits = (h[:, None, :] * W_r[None]).sum(-1)
        probs = F.softmax(logits.float(), dim=-1)
        top, idx = torch.topk(probs, router.top_k, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), idx

    ids = _ids(model, windows=2)
    with _patched(router, elementwise):
        _logits(model, ids)  # runs as a router
        with pytest.raises(AblationError, match=re.escape(view.name)) as err, reroute(view, 0):
            _logits(model, ids)
        assert "no linear map with 8 outputs" in str(err.value)
        with pytest.raises(AblationError, match="no linear map"):
            ablate(model, views, {"d": ids}, AblationConfig(modes=("reroute",), layers=(0,), experts=(0,)))
    assert torch._C._len_torch_function_stack() == 0
    assert not router._forward_hooks and not router._forward_pre_hooks
    assert model.model.layers[0].__class__.__name__ == "MixtralDecoderLayer"
