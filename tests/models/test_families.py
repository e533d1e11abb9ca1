"""The first transformers families, loaded from disk and recorded on a padded batch: checks
stronger than the common ones every registered family passes (``test_registry.py``).

For each family one forward pass runs under the recorder, with extra test hooks on each MoE
block (its input and output) and on its experts module (the choices the block actually
handed to its experts). Then:

(a) the recorded choices equal what the block handed its experts, and an independent
    oracle: moescope's own router built by ``from_hf`` where it exists, else the routing
    rule written out here (DeepSeek-V2 group-limited greedy, GraniteMoE) or the router
    module called again (PhiMoE's sparsemixer);
(b) valid choices number T_real·k (Switch: fewer, by exactly the tokens capacity dropped);
(c) Σ_j w_j · expert_j(x) (+ shared) computed from the *view's* matrices reproduces the
    block's output, which pins the orientation of gate / up / down for every layout;
(d) padding is False in the mask and the token ids are the input ids.
"""

from __future__ import annotations

import pytest
import tiny_checkpoints
import torch
import torch.nn.functional as F

from moescope.models import BY_MODEL_TYPE, RoutingRecorder
from moescope.moe import from_hf
from moescope.moe.lift import converters

#: the families these checks cover (tiny checkpoint names); each has an oracle and a reconstruction below
FAMILIES = list(tiny_checkpoints.ORIGINAL)
TEXTS = ["def add(a, b):\n    return a + b  # almost orthogonal", "Experts specialise.", "x = 3"]


@pytest.fixture(scope="module")
def run(loaded):
    """family -> everything one recorded forward pass produced (cached per family)."""
    cache: dict[str, dict] = {}

    def get(family: str) -> dict:
        if family in cache:
            return cache[family]
        model, tok, views = loaded(family)
        batch = tok(TEXTS, return_tensors="pt", padding=True)
        seen: dict[int, dict] = {v.index: {} for v in views}
        handles = []
        for v in views:
            def block_pre(m, args, kw, i=v.index):
                seen[i]["x"] = args[0].detach().clone()

            def block_post(m, args, out, i=v.index):
                seen[i]["y"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

            def experts_pre(m, args, kw, i=v.index):
                seen[i]["experts_args"] = [a.detach().clone() for a in args if torch.is_tensor(a)]

            handles += [v.module.register_forward_pre_hook(block_pre, with_kwargs=True),
                        v.module.register_forward_hook(block_post),
                        v.module.experts.register_forward_pre_hook(experts_pre, with_kwargs=True)]
        try:
            with RoutingRecorder(model, views) as rec, torch.no_grad():
                model(**batch)
        finally:
            for h in handles:
                h.remove()
        cache[family] = dict(model=model, views=views, batch=batch, seen=seen, records=rec.records)
        return cache[family]

    return get


def _canon(indices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's pairs ordered by expert index (-1 slots dropped to the end), for set equality."""
    key = indices.masked_fill(indices < 0, 1 << 30)
    order = key.argsort(dim=-1, stable=True)
    return indices.gather(-1, order), weights.float().gather(-1, order)


# -- oracles: the choices, computed without the recorder --------------------------------------------
def _dsv2_greedy(block, x):
    """DeepSeek-V2 group-limited greedy (DeepSeek-V2 paper §2.1.2, "device-limited routing"):
    softmax scores; a group scores its best expert; keep topk_group groups; top-k; × scaling."""
    gate = block.gate
    p = torch.softmax(x @ gate.weight.t(), -1)                                    # (T, E)
    groups = p.view(p.shape[0], gate.num_group, -1)
    keep = groups.amax(-1).topk(gate.topk_group, -1).indices                      # (T, G_keep)
    allowed = torch.zeros_like(groups[..., 0], dtype=torch.bool).scatter_(1, keep, True)
    p = p.masked_fill(~allowed.repeat_interleave(groups.shape[-1], 1), 0.0)
    w, i = p.topk(gate.top_k, -1)
    return i, w * gate.routed_scaling_factor


def _granite(block, x):
    """GraniteMoE: top-k of the logits, softmax over the k chosen logits."""
    top, i = (x @ block.router.weight.t()).topk(block.router.top_k, -1)
    return i, torch.softmax(top, -1)


def _phimoe(block, x):
    """PhiMoE's sparsemixer is not re-implemented: the router module is called again (eval mode)."""
    _, w, i = block.router(x)
    return i, w


def oracle(family: str, block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, k) indices and weights the block must have used, for block input x (B, S, H)."""
    flat = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        if type(block).__name__ in converters():         # moescope's router, an independent implementation
            r = from_hf(block).router(x if family == "switch_transformers" else flat)
            return r.indices, r.weights
        return {"deepseek_v2": _dsv2_greedy, "granitemoe": _granite, "granitemoeshared": _granite,
                "phimoe": _phimoe}[family](block, flat)


def _handed_to_experts(family: str, args: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (indices, weights) the block passed to its experts module."""
    if family == "switch_transformers":                 # (hidden, one-hot (T, 1, E), weights (T, 1))
        onehot, w = args[1].reshape(-1, args[1].shape[-1]), args[2].reshape(-1, 1)
        kept = onehot.bool().any(-1, keepdim=True)
        return onehot.argmax(-1, keepdim=True).masked_fill(~kept, -1), w * kept
    return args[1], args[2]                             # (hidden, indices (T, k), weights (T, k))


# -- (a) choices ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_choices_are_the_models_choices(run, family):
    r = run(family)
    for view, rec in zip(r["views"], r["records"], strict=True):
        seen = r["seen"][view.index]
        idx, w = _canon(rec.indices, rec.weights)
        want_idx, want_w = _canon(*oracle(family, view.module, seen["x"]))
        assert torch.equal(idx, want_idx), f"{family} layer {view.index}: choices differ from the oracle"
        torch.testing.assert_close(w, want_w, rtol=1e-5, atol=1e-6)
        if family != "llama4_text":  # Llama 4's experts get the router-weighted input, not indices
            got_idx, got_w = _canon(*_handed_to_experts(family, seen["experts_args"]))
            assert torch.equal(idx, got_idx)
            torch.testing.assert_close(w, got_w, rtol=1e-5, atol=1e-6)
        valid = rec.indices >= 0
        key = rec.weights.masked_fill(~valid, float("-inf"))
        assert (key[:, :-1] >= key[:, 1:]).all(), "column 0 must be the largest weight"


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_the_full_distribution_of_the_view_router(run, family):
    """scores (T, E) = softmax / sigmoid of x·Wᵀ (+ bias) with the view's router weight."""
    r = run(family)
    for view, rec in zip(r["views"], r["records"], strict=True):
        x = r["seen"][view.index]["x"].reshape(-1, view.hidden)
        logits = x @ view.router_weight.t() + (0 if view.router_bias is None else view.router_bias)
        want = torch.sigmoid(logits) if view.scoring == "sigmoid" else torch.softmax(logits, -1)
        assert rec.scores.shape == (x.shape[0], view.num_experts)
        torch.testing.assert_close(rec.scores, want, rtol=1e-5, atol=1e-6)


def test_deepseek_v3_choices_are_not_top_k_of_the_scores(run):
    """The fixture makes the selection bias and group limit matter; a recorder that re-derived
    top-k from the router logits would fail (a)."""
    r = run("deepseek_v3")
    rec, view = r["records"][0], r["views"][0]
    naive = rec.scores.topk(view.top_k, -1).indices.sort(-1).values
    assert (naive != rec.indices.sort(-1).values).any(-1).sum() > 0
    assert view.selection_bias is not None and view.selection_bias.abs().sum() > 0
    assert (view.n_group, view.topk_group) == (4, 2)


# -- (b) counts -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_valid_choices_count(run, family):
    r = run(family)
    real = r["batch"]["attention_mask"].bool().reshape(-1)
    for view, rec in zip(r["views"], r["records"], strict=True):
        valid = (rec.indices >= 0)[real].sum()
        if family == "switch_transformers":
            dropped = (oracle(family, view.module, r["seen"][view.index]["x"])[0] < 0).reshape(-1)[real].sum()
            assert dropped > 0, "the fixture's capacity should drop tokens"
            assert valid == real.sum() - dropped
            assert (rec.weights[rec.indices < 0] == 0).all()
        else:
            assert rec.indices.shape[1] == view.top_k
            assert valid == real.sum() * view.top_k


# -- (c) the view's matrices reproduce the block ----------------------------------------------------
def _swiglu(ew, x, act):
    return ew.down @ (act(ew.gate @ x) * (ew.up @ x))


def _expert_out(family: str, block, view, e: int, x: torch.Tensor) -> torch.Tensor:
    ew = view.expert(e)
    assert ew.up.shape == (ew.down.shape[1], view.hidden) and ew.down.shape == (view.hidden, ew.up.shape[0])
    if family == "switch_transformers":
        assert ew.gate is None
        return ew.down @ block.experts[f"expert_{e}"].act(ew.up @ x)
    assert ew.gate is not None and ew.gate.shape == ew.up.shape
    if family == "gpt_oss":                     # clamped SwiGLU with biases (not in the view)
        ex = block.experts
        g = (ew.gate @ x + ex.gate_up_proj_bias[e, ::2]).clamp(max=ex.limit)
        u = (ew.up @ x + ex.gate_up_proj_bias[e, 1::2]).clamp(-ex.limit, ex.limit)
        return ew.down @ ((u + 1) * g * torch.sigmoid(ex.alpha * g)) + ex.down_proj_bias[e]
    return _swiglu(ew, x, block.experts.act_fn)


def _reconstruct(family: str, block, view, x: torch.Tensor, indices, weights) -> torch.Tensor:
    """Σ_j w_j · expert_j(x) (Llama 4: Σ_j expert_j(w_j · x)) + shared experts, token by token."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for e, w in zip(indices[t].tolist(), weights[t].tolist(), strict=True):
            if e < 0:
                continue
            if family == "llama4":
                out[t] += _expert_out(family, block, view, e, w * x[t])
            else:
                out[t] += w * _expert_out(family, block, view, e, x[t])
        if family == "granitemoeshared":        # its shared MLP is added by the decoder layer, not the block
            continue
        for shared in view.shared:
            y = _swiglu(shared(), x[t], F.silu)
            if family == "qwen2_moe":
                y = torch.sigmoid(block.shared_expert_gate.weight @ x[t]) * y
            out[t] += y
    return out


SHARED = {"qwen2_moe": 1, "deepseek_v2": 1, "deepseek_v3": 1, "llama4_text": 1, "granitemoeshared": 1}


@pytest.mark.parametrize("family", FAMILIES)
def test_view_matrices_reproduce_the_block_output(run, family):
    r = run(family)
    fam = r["views"][0].family
    for view, rec in zip(r["views"], r["records"], strict=True):
        assert len(view.shared) == SHARED.get(family, 0)
        seen = r["seen"][view.index]
        x = seen["x"].reshape(-1, view.hidden)
        with torch.no_grad():
            got = _reconstruct(fam, view.module, view, x, rec.indices, rec.weights)
        want = seen["y"].reshape(-1, view.hidden)
        scale = want.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * max(1.0, scale))


def test_granite_shared_view_is_the_decoder_layers_shared_mlp(run):
    r = run("granitemoeshared")
    for view in r["views"]:
        layer = r["model"].get_submodule(view.name.rpartition(".")[0])
        x = r["seen"][view.index]["x"].reshape(-1, view.hidden)
        s = view.shared[0]()
        assert s.gate.shape == s.up.shape == (40, view.hidden) and s.down.shape == (view.hidden, 40)
        with torch.no_grad():
            want = layer.shared_mlp(x)
        torch.testing.assert_close(torch.stack([_swiglu(s, xt, F.silu) for xt in x]), want, rtol=1e-4, atol=1e-5)


# -- (d) mask and token ids -----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_padding_is_masked_and_ids_are_recorded(run, family):
    r = run(family)
    am, ids = r["batch"]["attention_mask"], r["batch"]["input_ids"]
    assert (am == 0).any(), "the batch must contain padding"
    for rec in r["records"]:
        assert rec.batch_shape == tuple(ids.shape)
        assert rec.mask.dtype == torch.bool and torch.equal(rec.mask, am.bool().reshape(-1))
        assert torch.equal(rec.token_ids, ids.reshape(-1))
        assert rec.indices.dtype == torch.int64 and rec.weights.dtype == rec.scores.dtype == torch.float32
        assert rec.indices.device.type == "cpu" and not rec.weights.requires_grad


def test_left_padding(loaded):
    model, tok, views = loaded("mixtral")
    batch = tok(TEXTS, return_tensors="pt", padding=True, padding_side="left")
    assert batch["attention_mask"][:, 0].eq(0).any()
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        model(**batch)
    assert all(torch.equal(r.mask, batch["attention_mask"].bool().reshape(-1)) for r in rec.records)


def test_the_covered_families_are_registered():
    assert all(name in BY_MODEL_TYPE and name in tiny_checkpoints.BUILDERS for name in FAMILIES)
