"""Claims 5-15 through the lab's own measurement path, on models with planted structure.

Each planted model is a real :class:`TinyLM` whose weights carry a known answer (experts in
disjoint or in one shared subspace, a router collapsed onto two experts, a router that routes by
domain, a shared expert in — or away from — the routed experts' common subspace); it is measured by
the same functions the lab uses (:mod:`moescope.lab.trained`) and judged by the claim's own
``evaluate``, over three "seeds" (three planted models), as the quick profile does.
"""

from dataclasses import replace

import pytest
import torch
from lab_fixtures import TINY_LM, tiny_tokens

from moescope.lab import trained
from moescope.lab.claims import (
    c05_sparse_compute,
    c06_expert_subspaces,
    c07_similarity_dynamics,
    c08_collapse,
    c09_uniformity,
    c10_shared_expert,
    c12_heads_vs_experts,
    c13_domains,
    c14_heatmaps,
    c15_quality_compute,
)
from moescope.lab.model import TinyLM
from moescope.lab.verdict import BY_CONSTRUCTION, VERDICTS

SEEDS = (0, 1, 2)
H, E = TINY_LM.d_model, TINY_LM.moe.num_experts


def _lm(seed: int, **kw) -> TinyLM:
    torch.manual_seed(seed)
    cfg = replace(TINY_LM, **kw) if kw else TINY_LM
    return TinyLM(cfg).eval()


def _seeded(name: str, values: list) -> dict:
    """{"name": v0, "name-seed1": v1, ...}: the lab's naming of replicates."""
    return {(name if i == 0 else f"{name}-seed{i}"): v for i, v in enumerate(values)}


def _plant_experts(model: TinyLM, blocks, seed: int, noise: float = 0.01) -> TinyLM:
    """Expert e's gate and up rows read only the coordinates ``blocks(e)`` (plus ``noise``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.moe_layers():
            w = layer.experts.gate_up_proj                                            # (E, 2I, H)
            new = noise * torch.randn(w.shape, generator=g)
            for e in range(w.shape[0]):
                idx = blocks(e)
                new[e][:, idx] += torch.randn(w.shape[1], len(idx), generator=g)
            w.copy_(new)
    return model


def _disjoint(seed):
    return _plant_experts(_lm(seed), lambda e: list(range(8 * e, 8 * e + 8)), seed)


def _one_subspace(seed):
    return _plant_experts(_lm(seed), lambda e: [0, 1, 2, 3], seed)


def _nulls(model, **kw):
    return trained.expert_nulls(model, draws=60, **kw)


# ---------------------------------------------------------------------------------------------- claim 6
@pytest.mark.parametrize(("plant", "verdict"), [(_disjoint, "supported"), (_one_subspace, "not supported"),
                                                (_lm, "inconclusive")])
def test_claim6_planted_experts(plant, verdict):
    runs = _seeded("top2", [{"expert_null": _nulls(plant(s))} for s in SEEDS])
    v = c06_expert_subspaces.evaluate(runs)
    assert v.verdict == verdict, (v.key, v.measured)


def test_claim6_dense_ffn_split_at_random_is_inconclusive():
    dense = [_lm(s, ffn="dense", dense_intermediate=4 * 32) for s in SEEDS]
    runs = _seeded("top2", [{"expert_null": trained.dense_split_null(m, groups=4, draws=60)} for m in dense])
    assert c06_expert_subspaces.evaluate(runs).verdict == "inconclusive"


# ---------------------------------------------------------------------------------------------- claim 7
def _trajectory(first, last, seed):
    ranks = [x["rank"] for x in _nulls(last)]
    return {"dynamics": [{"step": s, "weights": trained.weight_measurements(m), "expert_null": _nulls(m, ranks=ranks)}
                         for s, m in ((0, first), (9, last))],
            "drift_null": trained.drift_null(first, last, ranks, drifts=2, draws=40, seed=seed)}


def _upcycled(seed):
    """Every expert a copy of expert 0 plus 1% noise (sparse upcycling's start)."""
    model = _lm(seed)
    with torch.no_grad():
        for layer in model.moe_layers():
            w = layer.experts.gate_up_proj
            w.copy_(w[:1] + 0.01 * w[:1].std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)))
    return model


def _drifted(model, seed, scale=1.0):
    """``model`` with every expert weight moved in a random direction (no learning)."""
    import copy

    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for layer in out.moe_layers():
            w = layer.experts.gate_up_proj
            w.add_(scale * w.std() * torch.randn(w.shape, generator=g))
    return out


def test_claim7_separating_experts_is_supported_and_the_reverse_is_not():
    falling = _seeded("top2", [_trajectory(_one_subspace(s), _disjoint(s), s) for s in SEEDS])
    rising = _seeded("top2", [_trajectory(_disjoint(s), _one_subspace(s), s) for s in SEEDS])
    still = _seeded("top2", [_trajectory(_lm(s), _lm(s + 10), s) for s in SEEDS])
    assert c07_similarity_dynamics.evaluate(falling).verdict == "supported"
    assert c07_similarity_dynamics.evaluate(rising).verdict == "not supported"
    assert c07_similarity_dynamics.evaluate(still).verdict == "inconclusive"
    both = {**falling, **_seeded("top2-upcycled", [_trajectory(_upcycled(s), _disjoint(s), s) for s in SEEDS])}
    v = c07_similarity_dynamics.evaluate(both)
    assert v.verdict == "supported" and len(v.evidence) == 2


def test_claim7_upcycled_start_is_held_against_random_drift():
    """From copies any change lowers similarity: a random drift (no learning) must not count as the observation."""
    drift = _seeded("top2-upcycled", [_trajectory(m, _drifted(m, s), s) for s, m in ((s, _upcycled(s)) for s in SEEDS)])
    first, last = (c07_similarity_dynamics._curve(drift["top2-upcycled"])[i] for i in (0, -1))
    assert first > last + 0.3                                  # similarity did fall a lot ...
    v = c07_similarity_dynamics.evaluate(drift)
    assert v.verdict == "inconclusive", (v.key, v.measured)    # ... but no more than random drift makes it


# ------------------------------------------------------------------------------------- routers, planted
def _moe_inputs(model: TinyLM, layer: int, windows: dict) -> dict:
    """Per domain, the (T, H) inputs of MoE layer ``layer`` on the windows."""
    got = {}
    h = model.moe_layers()[layer].register_forward_pre_hook(
        lambda mod, args, kw: got.setdefault("x", []).append(args[0].reshape(-1, H)), with_kwargs=True)
    out = {}
    try:
        with torch.no_grad():
            for d, w in windows.items():
                got.clear()
                model(w)
                out[d] = torch.cat(got["x"])
    finally:
        h.remove()
    return out


def _val_windows(limit=16):
    val = tiny_tokens().val
    s = TINY_LM.seq_len
    return {d: t[: (min(limit, t.numel() // s)) * s].view(-1, s) for d, t in val.items()}


def _domain_router(model: TinyLM, scale: float = 30.0) -> TinyLM:
    """Router rows of experts 2d and 2d+1 = the direction that :func:`_token_lm` planted in domain d's tokens
    (plus a little noise to break the tie); the remaining experts' rows small."""
    g = torch.Generator().manual_seed(1)
    for layer in model.moe_layers():
        rows = 0.01 * torch.randn(layer.router.weight.shape, generator=g)
        rows[: 2 * len(model.domain_directions)] += scale * model.domain_directions.repeat_interleave(2, dim=0)
        with torch.no_grad():
            layer.router.weight.copy_(rows)
    return model


def _collapsed(model: TinyLM, scale: float = 30.0) -> TinyLM:
    """Most tokens to experts 0 and 1: a small constant offset in the embedding gives the MoE inputs a
    shared direction m (positive for ~95% of tokens), which the router rows of experts 0 and 1 read as
    +m and the others as −m; random directions of the same norms do not share it."""
    with torch.no_grad():
        model.wte.weight[:, 0] += 10 * model.wte.weight.std()
    windows = _val_windows()
    for i, layer in enumerate(model.moe_layers()):
        m = torch.nn.functional.normalize(torch.cat(list(_moe_inputs(model, i, windows).values())).mean(0), dim=0)
        rows = torch.empty(layer.router.weight.shape[0], H)
        rows[:2], rows[2:] = scale * m, -scale * m
        with torch.no_grad():
            layer.router.weight.copy_(rows)
    return model


def _token_lm(seed: int) -> TinyLM:
    """An untrained LM whose token embeddings carry their domain, as a trained LM's hidden states do: each
    token id is moved along a direction of the domain it occurs in most (and the embedding dominates the
    positions). Random routers then route domains apart by their tokens alone — the null has something to
    find, as on the lab's trained models."""
    model = _lm(seed, moe=replace(TINY_LM.moe, num_experts=6))    # two experts per domain
    val = tiny_tokens().val
    counts = torch.stack([torch.bincount(t, minlength=TINY_LM.vocab_size) for t in val.values()])   # (D, V)
    home = counts.argmax(0)
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(len(val), H, generator=g), dim=-1)
    with torch.no_grad():
        model.wte.weight.mul_(10.0)
        model.wte.weight.add_(directions[home] * 3 * model.wte.weight.norm(dim=-1, keepdim=True))
    model.domain_directions = directions
    return model


def _routing_run(model: TinyLM, null: bool = True) -> dict:
    val = tiny_tokens().val
    run = {"routing": trained.routing_measurements(model, val), "weights": trained.weight_measurements(model)}
    if null:
        run["router_null"] = trained.router_null(model, val, draws=20)
    return run


def test_claim8_and_9_collapse_without_balancing():
    balanced = [_routing_run(_lm(s), null=False) for s in SEEDS]
    collapsed = [_routing_run(_collapsed(_lm(s)), null=False) for s in SEEDS]
    assert max(balanced[0]["routing"]["layers"][0]["load"]) < 0.6
    assert sum(sorted(collapsed[0]["routing"]["layers"][0]["load"])[-2:]) > 0.9
    runs = {**_seeded("top2", balanced), **_seeded("top2-alpha0", collapsed)}
    assert c08_collapse.evaluate(runs).verdict == "supported"
    assert c09_uniformity.evaluate(runs).evidence[0]["values"][0] > 0.3       # load entropy far higher with balance
    swapped = {**_seeded("top2", collapsed), **_seeded("top2-alpha0", balanced)}
    assert c08_collapse.evaluate(swapped).verdict == "not supported"
    same = {**_seeded("top2", balanced), **_seeded("top2-alpha0", [_routing_run(_lm(s + 5), null=False)
                                                                   for s in SEEDS])}
    assert c08_collapse.evaluate(same).verdict == "inconclusive"


@pytest.fixture(scope="module")
def routers():
    return {"domain": _seeded("top2", [_routing_run(_domain_router(_token_lm(s))) for s in SEEDS]),
            "collapsed": _seeded("top2", [_routing_run(_collapsed(_token_lm(s))) for s in SEEDS]),
            "random": _seeded("top2", [_routing_run(_token_lm(s)) for s in SEEDS])}


def test_claim13_domain_router_is_supported_collapse_is_not(routers):
    assert c13_domains.evaluate(routers["domain"]).verdict == "supported"
    v = c13_domains.evaluate(routers["collapsed"])
    assert v.verdict == "not supported", (v.key, v.measured)
    assert c13_domains.evaluate(routers["random"]).verdict == "inconclusive"    # the null itself


def test_claim14_reads_the_random_router_null(routers):
    v = c14_heatmaps.evaluate(routers["collapsed"])                 # always the same experts: a stripe
    assert v.verdict == "supported" and "random direction" in v.baseline
    assert c14_heatmaps.evaluate(routers["random"]).verdict == "inconclusive"   # the null itself


# ---------------------------------------------------------------------------------------------- claim 10
def _with_shared(seed: int, shared_coords: list[int]) -> TinyLM:
    """Routed experts read the common block C = [0, 8) and a private block; the shared one ``shared_coords``."""
    moe = replace(TINY_LM.moe, shared_experts=1, shared_intermediate=32)
    model = _plant_experts(_lm(seed, moe=moe), lambda e: list(range(8)) + list(range(8 + 4 * e, 12 + 4 * e)), seed)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for layer in model.moe_layers():
            ffn = layer.shared.ffn
            for p in (ffn.gate_proj.weight, ffn.up_proj.weight):                      # (I_s, H)
                new = 0.01 * torch.randn(p.shape, generator=g)
                new[:, shared_coords] += torch.randn(p.shape[0], len(shared_coords), generator=g)
                p.copy_(new)
    return model


@pytest.mark.parametrize(("coords", "verdict"), [(list(range(8)), "supported"),
                                                 (list(range(24, 32)), "not supported")])
def test_claim10_shared_expert_in_or_away_from_the_common_subspace(coords, verdict):
    runs = _seeded("deepseek-moe", [{"weights": trained.weight_measurements(_with_shared(s, coords))} for s in SEEDS])
    v = c10_shared_expert.evaluate(runs)
    assert v.verdict == verdict, (v.key, v.measured)


def test_claim10_without_a_shared_expert_is_not_applicable():
    runs = {"deepseek-moe": {"weights": trained.weight_measurements(_lm(0))}}
    v = c10_shared_expert.evaluate(runs)
    assert v.verdict == "inconclusive" and v.numbers["not_applicable"]


# ------------------------------------------------------------------------------- quality and construction
def _runs_with_losses(**losses):
    out = {}
    for name, vals in losses.items():
        out.update(_seeded(name.replace("_", "-"), [{"val_loss": v, "objective": "masked" if "masked" in name or
                                                     "soft" in name else "causal", "params_active": 100,
                                                     "params_total": 400} for v in vals]))
    return out


def test_claim5_quality_at_equal_active_compute_and_the_flops_hold_by_construction():
    m = c05_sparse_compute.measure(hidden=32, intermediate=32, tokens=64, repeats=2)
    better = _runs_with_losses(top2=[4.0, 4.01, 3.99], dense_active=[4.2, 4.23, 4.18], dense_total=[3.9] * 3)
    worse = _runs_with_losses(top2=[4.3, 4.33, 4.28], dense_active=[4.0, 4.01, 3.99], dense_total=[3.9] * 3)
    v = c05_sparse_compute.evaluate(m, better)
    assert v.verdict == "supported" and v.construction and "FLOPs" in v.construction[0]
    assert "× the time" in v.timing and "time" not in v.measured     # the wall clock is reported apart, never compared
    assert c05_sparse_compute.evaluate(m, worse).verdict == "not supported"
    one_seed = {k: r for k, r in better.items() if "-seed" not in k}
    assert c05_sparse_compute.evaluate(m, one_seed).verdict == "inconclusive"    # one seed: no interval


def test_claim15_soft_moe_against_dense_masked():
    runs = _runs_with_losses(soft_moe=[5.40, 5.42, 5.39], dense_masked=[5.55, 5.56, 5.53], top2=[4.0] * 3,
                             switch_top1=[4.1] * 3)
    runs["switch-top1"]["params_active"] = 80
    v = c15_quality_compute.evaluate(runs, {"combine_entropy": 0.9})
    assert v.verdict == "supported" and len(v.construction) == 2


def test_claim12_measures_heads_on_activations():
    shares = [trained.output_shares(_lm(s), tiny_tokens().val) for s in SEEDS]
    assert all(0 < s["expert_fraction"] <= 2 / E + 1e-9 for s in shares)       # at most k of E: by construction
    v = c12_heads_vs_experts.evaluate(shares, 2, E)
    assert v.verdict in VERDICTS and v.construction and "k = 2" in v.construction[0]
    assert c12_heads_vs_experts.evaluate([{"head_fraction": x} for x in (0.95, 1.0, 0.97)], 2, 8).verdict == "supported"
    one_head = [{"head_fraction": x} for x in (0.26, 0.3, 0.28)]                  # one head carries each token
    assert c12_heads_vs_experts.evaluate(one_head, 2, 8).verdict == "not supported"
    assert BY_CONSTRUCTION not in VERDICTS
