"""Expert activity (``moescope.analysis.expert_activity``): outputs on real tokens, their lens and geometry.

* the per-expert outputs against transformers: Σ_e w_e · y_e over each token's chosen experts equals the
  block's routed output, read from the block itself by a hook (Qwen2-MoE: its output minus the shared
  expert's gated part, recomputed with the block's own modules), and Mixtral's y_e equals the SwiGLU
  written out here from the stacked weights;
* planted geometry: disjoint output subspaces (overlap and interference ≈ 0, far below the null),
  one shared subspace (both ≈ 1), and exchangeable rows (the null holds: p-values spread, the ratio's
  interval covers 1);
* the lens: sums / counts is the mean of the rows; a planted mean equal to a token's unembedding row
  reads back as that token;
* bad arguments name themselves.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moescope.analysis.expert_activity import (
    LayerOutputs,
    collect_outputs,
    decode_activity,
    expert_activity,
    expert_runner,
    output_geometry,
)
from moescope.analysis.logit_lens import final_norm_gain, read_outputs, unembedding
from moescope.models.loading import load_moe_model


def _batches(model, n: int = 3, shape: tuple[int, int] = (2, 24), seed: int = 0, pad: int = 5):
    """n batches of random ids; the last sequence of each batch ends in ``pad`` padding tokens."""
    vocab = model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, shape, generator=gen)
        mask = torch.ones_like(ids)
        mask[-1, shape[1] - pad:] = 0
        out.append((ids, mask))
    return out


def _block_outputs(model, views, batches, routed_part) -> dict[int, torch.Tensor]:
    """Per view: the (real tokens, H) routed output of its block over ``batches``, read by a forward hook."""
    got = {v.index: [] for v in views}
    handles = [v.module.register_forward_hook(
        lambda m, args, out, i=v.index: got[i].append(routed_part(m, args[0], out).detach()))
        for v in views]
    try:
        with torch.no_grad():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    masks = torch.cat([mask.reshape(-1) for _, mask in batches]).bool()
    return {i: torch.cat([o.reshape(-1, o.shape[-1]) for o in outs])[masks] for i, outs in got.items()}


def _mixtral_routed(block, x, out):
    return out[0] if isinstance(out, tuple) else out


def _qwen2_routed(block, x, out):
    """Qwen2-MoE's block output minus its shared expert's part, sigmoid(x w_g) · shared(x), from its own modules."""
    flat = x.reshape(-1, x.shape[-1])
    shared = torch.sigmoid(block.shared_expert_gate(flat)) * block.shared_expert(flat)
    return out.reshape(-1, out.shape[-1]) - shared


@pytest.mark.parametrize("family,routed_part", [("mixtral", _mixtral_routed), ("qwen2_moe", _qwen2_routed)])
def test_weighted_outputs_add_up_to_the_blocks_routed_output(saved, family, routed_part):
    model, _, views = load_moe_model(saved(family))
    batches = _batches(model)
    reference = _block_outputs(model, views, batches, routed_part)
    layers = collect_outputs(model, views, batches, max_tokens=10_000, max_rows=10_000)
    for view, acc in zip(views, layers, strict=True):
        want = reference[view.index]                                                  # (real tokens, H)
        assert acc.reason is None and acc.tokens == want.shape[0] == 3 * (2 * 24 - 5)
        total = torch.zeros_like(want)
        for e in range(view.num_experts):
            assert acc.rows[e].shape[0] == acc.counts[e]                              # every row kept
            total.index_add_(0, acc.positions[e], acc.rows[e] * acc.weights[e][:, None])
        torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-6)
        assert acc.identity_error < 1e-5
        assert sum(acc.counts) == acc.tokens * view.top_k                            # k experts per real token


def test_mixtral_outputs_equal_the_swiglu_written_out(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    view = views[0]
    inputs = []
    handle = view.module.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    batches = _batches(model, n=1)
    try:
        acc = collect_outputs(model, [view], batches, max_tokens=10_000, max_rows=10_000)[0]
    finally:
        handle.remove()
    x = inputs[0].reshape(-1, view.hidden)[batches[0][1].reshape(-1).bool()]        # (real tokens, H)
    experts = view.module.experts
    for e in range(view.num_experts):
        gate, up = F.linear(x[acc.positions[e]], experts.gate_up_proj[e]).chunk(2, dim=-1)
        want = F.linear(F.silu(gate) * up, experts.down_proj[e])                    # W_down (silu(W_g x) ⊙ W_u x)
        torch.testing.assert_close(acc.rows[e], want.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gemma4_text", "gpt_oss", "deepseek_v3", "jetmoe", "dbrx", "nemotron_h",
                                    "switch_transformers", "llama4_text"])
def test_every_kind_of_block_is_run_with_its_own_code(saved, family):
    model, _, views = load_moe_model(saved(family))
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    layers = collect_outputs(model, views, [(ids, torch.ones_like(ids))], max_tokens=64)
    for acc in layers:
        assert acc.reason is None and acc.tokens == 32
        if family != "llama4_text":   # Llama 4 weights the experts' *input*: no Σ w·y identity, by design
            assert acc.identity_error < 1e-5


def test_bfloat16_checkpoints_add_up_within_their_precision(saved):
    model, _, views = load_moe_model(saved("mixtral"), dtype="bfloat16")
    for acc in collect_outputs(model, views, _batches(model, n=1), max_tokens=64):
        assert acc.reason is None and 0 < acc.identity_error < 3e-2 and acc.rows[0].dtype == torch.float32


def test_outputs_that_do_not_add_up_refuse_the_layer(saved):
    """An experts module whose routed sum differs from its experts run alone: the layer is reported, not measured."""
    model, _, views = load_moe_model(saved("mixtral"))
    experts = views[0].module.experts
    handle = experts.register_forward_hook(lambda m, args, out: out + 1.0 if args[1].shape[1] > 1 else None)
    try:
        res = expert_activity(model, views, _batches(model, n=1), draws=0)
    finally:
        handle.remove()
    bad, good = res["layers"]
    assert "do not add up" in bad["reason"] and bad["overlap"]["observed"] is None
    assert all(e["reason"] == bad["reason"] and e["lens"] == [] for e in bad["experts"])
    assert good["reason"] is None and good["overlap"]["observed"] is not None


def test_llama4_outputs_equal_its_experts_module_on_unit_scores(saved):
    """Llama 4's experts module runs expert e on slot e of an (E·n, H) input: fill only slot e."""
    model, _, views = load_moe_model(saved("llama4_text"))
    view = views[0]
    inputs = []
    handle = view.module.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    ids = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(2))
    try:
        acc = collect_outputs(model, [view], [(ids, torch.ones_like(ids))], max_tokens=64)[0]
    finally:
        handle.remove()
    x = inputs[0].reshape(-1, view.hidden)
    for e in range(view.num_experts):
        if acc.counts[e] == 0:
            continue
        n = int(acc.counts[e])
        slots = torch.zeros(view.num_experts, n, view.hidden)
        slots[e] = x[acc.positions[e]]
        with torch.no_grad():
            want = view.module.experts(slots.reshape(-1, view.hidden)).reshape(view.num_experts, n, -1)[e]
        torch.testing.assert_close(acc.rows[e], want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- planted geometry

def _planted(bases: list[torch.Tensor], sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, b.shape[1], generator=gen) @ b.T for b, n in zip(bases, sizes, strict=True)]


def test_disjoint_subspaces_neither_overlap_nor_interfere():
    h, s, sizes = 32, 4, [40, 60, 80, 50]
    eye = torch.eye(h)
    rows = _planted([eye[:, e * s:(e + 1) * s] for e in range(4)], sizes)        # expert e: coordinates e·s..
    g = output_geometry(rows, rank=s, draws=99)
    assert g["rank"] == s and g["experts_compared"] == 4
    assert g["overlap"]["observed"] < 1e-10 and g["overlap"]["null_mean"] > 0.1
    assert g["overlap"]["ratio"] < 0.01 and g["overlap"]["p_value"] == pytest.approx(1 / 100)
    assert g["overlap"]["interval"][1] < 0.05
    assert g["interference"]["observed"] < 1e-10 and g["interference"]["p_value"] == pytest.approx(1 / 100)
    for e in g["experts"]:
        assert e["interference"] < 1e-10 < 0.1 < e["null_interference"]
        assert e["effective_rank"] == pytest.approx(s, rel=0.25) and e["rank"] <= s
        assert e["interference_p"] == pytest.approx(1 / 100)
    assert g["matrix"][0][1] < 1e-10 and g["matrix"][2][2] == pytest.approx(1.0)


def test_one_shared_subspace_overlaps_and_interferes_fully():
    h, s = 32, 4
    basis = torch.linalg.qr(torch.randn(h, s, generator=torch.Generator().manual_seed(3)))[0]
    rows = _planted([basis] * 4, [40, 60, 80, 50], seed=1)
    g = output_geometry(rows, rank=s, draws=39)
    assert g["overlap"]["observed"] == pytest.approx(1.0, abs=1e-9)
    for e in g["experts"]:
        assert e["interference"] == pytest.approx(1.0, abs=1e-9)
    assert g["interference"]["others_can_fill"] is False              # 3·4 < 32: 1 is the data, not the dimension


def test_the_null_holds_when_rows_are_exchangeable():
    """Rows drawn i.i.d. and dealt to experts at random: the observed grouping is one more null draw."""
    h, sizes = 16, [30, 45, 60, 38]
    scale = torch.logspace(0, -1, h, dtype=torch.float64)                        # anisotropic, as outputs are
    p_overlap, p_interference, covered = [], [], 0
    for seed in range(20):
        gen = torch.Generator().manual_seed(100 + seed)
        pool = torch.randn(sum(sizes), h, generator=gen, dtype=torch.float64) * scale
        rows = list(pool[torch.randperm(pool.shape[0], generator=gen)].split(sizes))
        g = output_geometry(rows, rank=3, draws=39, seed=seed)
        p_overlap.append(g["overlap"]["p_value"])
        p_interference.append(g["interference"]["p_value"])
        lo, hi = g["overlap"]["interval"]
        covered += lo <= 1.0 <= hi
    for p in (np.array(p_overlap), np.array(p_interference)):
        assert (p < 0.05).mean() <= 0.25 and p.max() > 0.5 and 0.25 < p.mean() < 0.75
    assert covered >= 16                                                         # nominal 95%: 19 of 20 expected


def test_overlap_and_interference_equal_an_independent_computation():
    """Unplanted rows: overlap against moescope.geometry's principal angles (Knyazev–Argentati), interference
    against scipy's orthonormal basis of the others' stacked subspaces; the summary against moescope.stats."""
    from scipy.linalg import orth

    from moescope.geometry import mean_cos2
    from moescope.stats import permutation_pvalue, permutation_ratio

    gen = torch.Generator().manual_seed(7)
    h, r, sizes = 24, 3, [20, 33, 27, 41]
    mix = torch.randn(h, h, generator=gen, dtype=torch.float64)
    rows = [torch.randn(n, h, generator=gen, dtype=torch.float64) @ (mix * torch.rand(h, generator=gen,
                                                                                     dtype=torch.float64))
            for n in sizes]
    g = output_geometry(rows, rank=r, draws=59, seed=5)
    bases = [np.linalg.svd(y.numpy(), full_matrices=False)[2][:r].T for y in rows]     # (H, r) top right vectors
    pairs = [float(mean_cos2(bases[a], bases[b])) for a in range(4) for b in range(a + 1, 4)]
    assert g["overlap"]["observed"] == pytest.approx(np.mean(pairs), abs=1e-10)
    assert g["matrix"][1][3] == pytest.approx(float(mean_cos2(bases[1], bases[3])), abs=1e-10)
    for e, y in enumerate(rows):
        q = orth(np.concatenate([bases[f] for f in range(4) if f != e], axis=1))      # (H, 3r)
        y = y.numpy()
        assert g["experts"][e]["interference"] == pytest.approx(((y @ q) ** 2).sum() / (y ** 2).sum(), abs=1e-10)
    for name in ("overlap", "interference"):
        summary = g[name]
        null = np.array(summary["null"])
        ratio, (lo, hi) = permutation_ratio([summary["observed"]], [null])
        assert summary["ratio"] == pytest.approx(ratio) and summary["interval"] == pytest.approx([lo, hi])
        assert summary["p_value"] == permutation_pvalue(summary["observed"], null, "less")
        assert summary["null_mean"] == pytest.approx(null.mean()) and summary["draws"] == null.size == 59


def test_energy_rank_and_too_few_rows_are_reported_not_dropped():
    h = 16
    eye = torch.eye(h)
    rows = _planted([eye[:, :3], eye[:, 3:6], eye[:, 6:9], eye[:, 9:12]], [50, 50, 5, 2])
    g = output_geometry(rows, energy=0.99, draws=0)
    assert g["rank_rule"] == "energy" and g["rank"] == 3                      # three directions hold all energy
    assert g["experts"][0]["captured"] == pytest.approx(1.0)
    assert [e["expert"] for e in g["experts"]] == [0, 1, 2, 3]
    assert g["experts"][2]["interference"] is None and "max(4, 2r) = 6" in g["experts"][2]["reason"]
    assert g["experts"][3]["effective_rank"] is None and "at least 4" in g["experts"][3]["reason"]
    assert g["experts_compared"] == 2 and g["overlap"]["null_mean"] is None and g["overlap"]["draws"] == 0
    assert g["experts"][0]["effective_rank"] == pytest.approx(3, rel=0.3)


def test_the_energy_rank_is_capped_by_the_rows_the_experts_have():
    gen = torch.Generator().manual_seed(4)
    rows = [torch.randn(20, 64, generator=gen) for _ in range(4)]               # isotropic: energy rank ~ 17 of 20
    g = output_geometry(rows, draws=0)
    assert all(e["rank"] > 10 for e in g["experts"])
    assert g["rank"] == 10 and g["experts_compared"] == 4                      # median rows / 2
    assert all(0.5 < e["captured"] < 0.9 for e in g["experts"])


def test_effective_rank_is_the_exponential_of_the_energy_entropy():
    # rows (2, 3)·e1, (2, 3)·e2 scaled: σ² = (a², b²) -> p = (a², b²)/(a² + b²)
    y = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    e = output_geometry([y, y], hidden=2, rank=1, draws=0)["experts"][0]
    p = np.array([9.0, 1.0]) / 10
    assert e["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert e["rank"] == 1                                                           # 90% of the energy in one


# --------------------------------------------------------------------------- reservoir and lens

def test_reservoir_keeps_every_row_with_equal_chance():
    acc = LayerOutputs(layer=0, name="x", num_experts=1, hidden=1, max_rows=10, seed=0)
    hits = np.zeros(100)
    for trial in range(300):
        acc = LayerOutputs(layer=0, name="x", num_experts=1, hidden=1, max_rows=10, seed=trial)
        for start in range(0, 100, 7):                                               # uneven batches
            pos = torch.arange(start, min(start + 7, 100))
            acc.add(0, pos[:, None].float(), pos, torch.ones(pos.numel()))
        acc.finished()
        assert sorted(acc.positions[0].tolist()) == sorted(set(acc.positions[0].tolist()))
        assert torch.equal(acc.rows[0][:, 0].long(), acc.positions[0])                  # rows travel with their token
        hits[acc.positions[0].numpy()] += 1
    share = hits / 300                                                                  # 10 / 100 expected
    assert abs(share[:10].mean() - 0.1) < 0.03 and abs(share[-10:].mean() - 0.1) < 0.03
    assert acc.counts[0] == 100 and acc.mean(0).item() == pytest.approx(49.5)


def test_the_mean_output_is_the_mean_of_all_rows_even_when_sampled(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    batches = _batches(model, n=2)
    full = collect_outputs(model, views[:1], batches, max_rows=10_000)[0]
    small = collect_outputs(model, views[:1], batches, max_rows=8, seed=3)[0]
    for e in range(views[0].num_experts):
        torch.testing.assert_close(full.mean(e), full.rows[e].double().mean(0))
        torch.testing.assert_close(small.mean(e), full.mean(e))
        assert small.rows[e].shape[0] == min(8, full.counts[e])
        torch.testing.assert_close(small.rows[e], full.rows[e][torch.searchsorted(full.positions[e],
                                                                                  small.positions[e])])


def test_a_planted_mean_output_reads_as_its_token(saved):
    model, tok, views = load_moe_model(saved("mixtral"))
    w_u, gain = unembedding(model), final_norm_gain(model)
    token = 42
    target = w_u[token] / gain                                    # after the final gain: the token's own row
    (plus, minus), (none, _) = read_outputs(torch.stack([target, torch.zeros_like(target)]), w_u, gain)
    assert plus[0] == token and none == []
    (plus, minus), = read_outputs(-target[None], w_u, gain)
    assert minus[0] == token                                      # the sign of a mean is meaningful
    # end to end: expert 2 of the last layer writes only multiples of the target
    layer, expert = len(views) - 1, 2
    with torch.no_grad():
        down = views[layer].expert(expert).down
        down.copy_(torch.outer(target, torch.randn(down.shape[1], generator=torch.Generator().manual_seed(0))))
    res = expert_activity(model, views, _batches(model), draws=0)
    e = res["layers"][layer]["experts"][expert]
    assert e["tokens"] > 0 and token in (e["lens"][0], e["lens_suppressed"][0])
    json.dumps(res, allow_nan=False)
    decoded = decode_activity(res, lambda t: tok.decode([t]))
    assert all(isinstance(t, str) for t in decoded["layers"][layer]["experts"][expert]["lens"])
    assert decoded["layers"][layer]["overlap"] == res["layers"][layer]["overlap"]


# --------------------------------------------------------------------------- the whole call

def test_expert_activity_stops_at_max_tokens_and_reports_progress(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    consumed, progress = [], []

    def stream():
        for i, batch in enumerate(_batches(model, n=10)):
            consumed.append(i)
            yield batch

    res = expert_activity(model, views, stream(), max_tokens=50, draws=39, on_batch=progress.append)
    assert consumed == [0, 1] and progress == [43, 7]                            # 43 real tokens per batch
    assert [layer["tokens"] for layer in res["layers"]] == [50, 50]
    layer = res["layers"][0]
    assert set(res) == {"max_tokens", "max_rows", "rank", "energy", "draws", "seed", "level", "sample", "top",
                        "lens_reason", "layers"}                               # as the docstring documents
    assert set(layer) == {"layer", "name", "method", "tokens", "hidden", "num_experts", "identity_error", "reason",
                          "rank", "rank_rule", "energy", "experts_compared", "feasible_min", "experts", "overlap",
                          "interference", "matrix"}
    summary = {"observed", "null_mean", "ratio", "interval", "p_value", "p_greater", "draws", "null", "reason"}
    assert set(layer["overlap"]) == summary and set(layer["interference"]) == summary | {"others_can_fill"}
    assert set(layer["experts"][0]) == {"expert", "tokens", "rows", "mean_norm", "lens", "lens_suppressed",
                                        "effective_rank", "rank", "captured", "interference", "null_interference",
                                        "interference_p", "reason"}
    assert sum(e["tokens"] for e in layer["experts"]) == 50 * views[0].top_k
    json.dumps(res, allow_nan=False)


def test_a_soft_moe_layer_is_reported_with_its_reason():
    from moescope.models.adapters import find_moe_layers
    from moescope.moe.experts import Experts
    from moescope.moe.soft import SoftMoELayer

    view = find_moe_layers(torch.nn.Sequential(SoftMoELayer(hidden=16, experts=Experts(4, 16, 8))))[0]
    assert "soft routing" in expert_runner(view)


@pytest.mark.parametrize("kwargs,name", [
    ({"max_tokens": 0}, "max_tokens"), ({"max_rows": -1}, "max_rows"), ({"rank": 0}, "rank"),
    ({"rank": 17}, "rank"), ({"energy": 0.0}, "energy"), ({"energy": 1.5}, "energy"), ({"draws": 10}, "draws"),
    ({"seed": -1}, "seed"), ({"top": 0}, "top"), ({"on_batch": 3}, "on_batch"),
])
def test_bad_arguments_are_named_before_any_work(saved, kwargs, name):
    model, _, views = load_moe_model(saved("mixtral"))                 # H = 32: rank <= 16

    def never():
        raise AssertionError("no batch may be read before the arguments are checked")
        yield

    with pytest.raises(ValueError, match=name):
        expert_activity(model, views, never(), **kwargs)


def test_bad_views_and_batches_are_named(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    with pytest.raises(ValueError, match="views"):
        expert_activity(model, [], [])
    with pytest.raises(ValueError, match="layer indices"):
        expert_activity(model, [views[0], views[0]], [])
    with pytest.raises(ValueError, match="batch 0: input_ids"):
        expert_activity(model, views, [(torch.zeros(5, dtype=torch.long), torch.ones(5))])
    with pytest.raises(ValueError, match="batch 0: attention_mask"):
        expert_activity(model, views, [(torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 4))])
    with pytest.raises(ValueError, match=r"batch 0: token ids must lie in \[0, 300\)"):
        expert_activity(model, views, [(torch.full((1, 5), 300), torch.ones(1, 5))])
    with pytest.raises(ValueError, match="rows must all have H"):
        output_geometry([torch.zeros(5, 3), torch.zeros(5, 4)])
