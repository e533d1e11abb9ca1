"""Routing statistics: hand-computed values, merge = concatenation, masks, distributed sums."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from moescope.analysis.routing import RoutingStats, topk_overlap
from moescope.models.view import RoutingRecord


def _record(indices, scores, batch_shape, mask=None, token_ids=None, layer=0):
    indices = torch.as_tensor(indices)
    t = indices.shape[0]
    return RoutingRecord(layer=layer, indices=indices, weights=torch.ones(indices.shape),
                         scores=torch.as_tensor(scores, dtype=torch.float32), batch_shape=batch_shape,
                         mask=torch.ones(t, dtype=torch.bool) if mask is None else torch.as_tensor(mask),
                         token_ids=None if token_ids is None else torch.as_tensor(token_ids))


def _tiny():
    """One sequence of 4 tokens, E = 3, k = 2 (first choice first)."""
    idx = [[0, 1], [0, 2], [1, 0], [0, 1]]
    scores = [[0.5, 0.3, 0.2], [0.6, 0.1, 0.3], [0.3, 0.6, 0.1], [0.7, 0.2, 0.1]]
    return _record(idx, scores, (1, 4), token_ids=[5, 6, 5, 7])


def test_hand_computed_summary():
    stats = RoutingStats(3, 2, num_layers=1, vocab_size=10)
    stats.update(_tiny())
    s = stats.summary(0)
    assert s["tokens"] == 4
    # all-k counts: expert0 4, expert1 3, expert2 1 over 8 assignments
    assert s["load"] == pytest.approx([4 / 8, 3 / 8, 1 / 8])
    assert s["load_first_choice"] == pytest.approx([3 / 4, 1 / 4, 0.0])
    p = [(0.5 + 0.6 + 0.3 + 0.7) / 4, (0.3 + 0.1 + 0.6 + 0.2) / 4, (0.2 + 0.3 + 0.1 + 0.1) / 4]
    assert s["mean_score"] == pytest.approx(p)
    assert s["balance_loss"]["switch"] == pytest.approx(3 * (0.75 * p[0] + 0.25 * p[1]))
    assert s["balance_loss"]["hf"] == pytest.approx(3 * (1.0 * p[0] + 0.75 * p[1] + 0.25 * p[2]))
    assert s["balance_loss"]["megablocks"] == pytest.approx(3 * (0.5 * p[0] + 0.375 * p[1] + 0.125 * p[2]))
    # consecutive pairs: (0,1)->(0,2): first same, sets share 0; (0,2)->(1,0): first differs, share 0;
    # (1,0)->(0,1): first differs, share both -> first 1/3, any 3/3
    assert s["repetition"]["first"] == pytest.approx(1 / 3)
    assert s["repetition"]["any"] == pytest.approx(1.0)
    assert s["repetition"]["uniform_any"] == pytest.approx(1.0)  # k = 2 of 3: two pairs always meet
    assert s["coactivation"] == [[4, 3, 1], [3, 3, 0], [1, 0, 1]]
    assert s["dead_experts"] == [] and s["starved_experts"] == []
    counts = torch.tensor([4.0, 3.0, 1.0])
    assert s["load_cv"] == pytest.approx(float(counts.std(unbiased=False) / counts.mean()))
    # token 5 appears twice: choices {0,1} and {1,0} -> expert 0 twice, expert 1 twice -> best share 2/4
    tok = s["tokens_specialisation"]
    assert tok["seen_token_ids"] == 3
    assert tok["mean_top_expert_share"] == pytest.approx((2 + 1 + 1) / 8)


def test_dead_starved_and_entropy():
    idx = [[0]] * 60 + [[1]]                      # counts (60, 1, 0): mean 20.3, starved below 2.03
    scores = [[1.0, 0.0, 0.0]] * 60 + [[0.0, 1.0, 0.0]]
    stats = RoutingStats(3, 1, num_layers=1)
    stats.update(_record(idx, scores, (1, 61)))
    s = stats.summary(0)
    assert s["dead_experts"] == [2] and s["starved_experts"] == [1]
    assert s["router_entropy"] == pytest.approx(0.0, abs=1e-9)
    uniform = RoutingStats(4, 1, num_layers=1)
    uniform.update(_record([[0], [1], [2], [3]], [[0.25] * 4] * 4, (1, 4)))
    u = uniform.summary(0)
    assert u["router_entropy"] == pytest.approx(1.0) and u["load_entropy"] == pytest.approx(1.0)
    assert u["balance_loss"]["switch"] == pytest.approx(1.0) and u["load_cv"] == 0.0


def test_merge_equals_concatenation():
    g = torch.Generator().manual_seed(0)
    e, k = 6, 2

    def batch(b, s):
        scores = torch.softmax(torch.randn(b * s, e, generator=g), -1)
        idx = scores.topk(k, -1).indices
        mask = torch.rand(b * s, generator=g) > 0.2
        ids = torch.randint(0, 20, (b * s,), generator=g)
        return _record(idx, scores, (b, s), mask, ids)

    r1, r2 = batch(2, 5), batch(3, 5)
    a = RoutingStats(e, k, num_layers=1, domains=("code", "math"), vocab_size=20)
    b = RoutingStats(e, k, num_layers=1, domains=("code", "math"), vocab_size=20)
    whole = RoutingStats(e, k, num_layers=1, domains=("code", "math"), vocab_size=20)
    a.update(r1, "code")
    b.update(r2, "math")
    whole.update(r1, "code")
    whole.update(r2, "math")
    _assert_close(a.merge(b).summary(0), whole.summary(0))


def _assert_close(x, y):
    """Equal structure and counts; float sums equal up to summation order."""
    if isinstance(x, dict):
        assert x.keys() == y.keys()
        for key in x:
            _assert_close(x[key], y[key])
    elif isinstance(x, list):
        assert len(x) == len(y)
        for a, b in zip(x, y, strict=True):
            _assert_close(a, b)
    elif isinstance(x, float):
        assert x == pytest.approx(y, rel=1e-12, abs=1e-15)
    else:
        assert x == y


def test_padding_is_excluded():
    clean = RoutingStats(3, 2, num_layers=1)
    clean.update(_tiny())
    padded = RoutingStats(3, 2, num_layers=1)
    idx = [[0, 1], [0, 2], [1, 0], [0, 1], [2, 1], [2, 1]]
    scores = [[0.5, 0.3, 0.2], [0.6, 0.1, 0.3], [0.3, 0.6, 0.1], [0.7, 0.2, 0.1], [0, 0, 1.0], [0, 0, 1.0]]
    padded.update(_record(idx, scores, (1, 6), mask=[1, 1, 1, 1, 0, 0]))
    assert padded.summary(0) == clean.summary(0)


def test_domain_specialisation_with_chance_correction():
    stats = RoutingStats(4, 1, num_layers=1, domains=("code", "prose"))
    stats.update(_record([[0]] * 4, [[1.0, 0, 0, 0]] * 4, (1, 4)), "code")
    stats.update(_record([[1], [2], [3], [0]], [[0.25] * 4] * 4, (1, 4)), "prose")
    d = stats.summary(0)["domains"]
    assert d["chance"] == 0.25
    assert d["share"][0] == [1.0, 0.0, 0.0, 0.0]
    assert d["specialisation"][0][0] == pytest.approx(1.0)            # all code tokens on expert 0
    assert d["specialisation"][1][0] == pytest.approx(0.0)            # prose at chance everywhere
    assert d["specialisation"][0][1] == pytest.approx(-1 / 3)         # (0 - 1/4) / (3/4)
    with pytest.raises(ValueError, match="unknown domain 'math'"):
        stats.update(_record([[0]], [[1.0, 0, 0, 0]], (1, 1)), "math")


def test_saturation():
    a, b = torch.tensor([[0, 1], [2, 3], [4, -1]]), torch.tensor([[1, 0], [2, 0], [5, -1]])
    assert topk_overlap(a, b) == pytest.approx((1.0 + 0.5 + 0.0) / 3)    # "no expert" (-1) never matches
    with pytest.raises(ValueError, match="same tokens"):
        topk_overlap(a, b[:2])


def test_errors():
    stats = RoutingStats(3, 2, num_layers=1)
    with pytest.raises(ValueError, match="record for layer 1"):
        stats.update(_tiny().__class__(**{**_tiny().__dict__, "layer": 1}))
    with pytest.raises(ValueError, match="num_layers is required"):
        RoutingStats(3, 2)
    with pytest.raises(ValueError, match="same model layout"):
        stats.merge(RoutingStats(3, 2, num_layers=2))


def test_all_reduce_sums_over_ranks(tmp_path):
    """Two gloo processes each accumulate half the records; the all-reduce equals one process."""
    import torch.multiprocessing as mp

    port = 29500 + (hash(str(tmp_path)) % 1000)
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    whole = RoutingStats(6, 2, num_layers=1)
    for r in _shards():
        whole.update(r)
    reduced = torch.load(tmp_path / "rank0.pt", weights_only=False)
    _assert_close(reduced, whole.summary(0))


def _shards():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        scores = torch.softmax(torch.randn(8, 6, generator=g), -1)
        out.append(_record(scores.topk(2, -1).indices, scores, (2, 4)))
    return out


def _worker(rank, world, port, folder):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        stats = RoutingStats(6, 2, num_layers=1)
        stats.update(_shards()[rank])
        stats.all_reduce()
        if rank == 0:
            torch.save(stats.summary(0), f"{folder}/rank0.pt")
    finally:
        dist.destroy_process_group()


def test_uniform_any_baseline_matches_mixtral_table5():
    stats = RoutingStats(8, 2, num_layers=1)
    stats.update(_record([[0, 1]], [[1 / 8] * 8], (1, 1)))
    assert stats.summary(0)["repetition"]["uniform_any"] == pytest.approx(1 - 15 / 28)  # 46%
    assert math.isclose(stats.summary(0)["repetition"]["uniform_first"], 0.125)


@pytest.mark.parametrize(("experts", "k", "seed"), [(3, 1, 0), (6, 2, 1), (16, 4, 2)])
def test_balance_losses_equal_the_token_level_losses(experts, k, seed):
    """The analyzer's streamed balance losses are :func:`moescope.moe.losses.load_balancing_loss`
    on the concatenation of the same records, for every convention: two batches of sequences,
    padding, empty (-1) slots. (Every sequence keeps a real token: a sequence that is all padding
    counts in the token-level loss's mean over sequences but is skipped by the analyzer.)"""
    from moescope.moe.losses import CONVENTIONS, load_balancing_loss

    g = torch.Generator().manual_seed(seed)
    seq = 7
    stats = RoutingStats(experts, k, num_layers=1)
    scores, indices, masks = [], [], []
    for b in (2, 3):
        s = torch.softmax(torch.randn(b * seq, experts, generator=g) * 2, -1)
        idx = s.topk(k, -1).indices
        idx[1, -1] = -1
        mask = torch.rand(b * seq, generator=g) > 0.3
        mask.view(b, seq)[:, 0] = True
        stats.update(_record(idx, s, (b, seq), mask))
        scores.append(s), indices.append(idx), masks.append(mask)
    reported = stats.summary(0)["balance_loss"]
    assert set(reported) == set(CONVENTIONS)
    scores, indices, mask = torch.cat(scores), torch.cat(indices), torch.cat(masks).float()
    for convention in CONVENTIONS:
        ref = load_balancing_loss(scores, indices, convention=convention, attention_mask=mask, sequence_length=seq)
        assert reported[convention] == pytest.approx(ref.item(), rel=1e-6), convention


def test_router_margins_and_near_ties_against_a_numpy_recount():
    """k = 2 of 4: margins (s_2 − s_3)/|s_2| counted below 2⁻⁸, 2⁻⁶, 2⁻⁴, 2⁻²; the selection bias shifts them."""
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.dirichlet(np.ones(4), size=200))
    scores[:5] = torch.tensor([0.5, 0.2 * (1 + 2.0 ** -10), 0.2, 0.1 - 0.2 * 2.0 ** -10])   # planted near-ties
    indices = scores.topk(2, dim=-1).indices
    bias = torch.tensor([0.0, 0.3, 0.0, -0.1])
    for selection_bias in (None, bias):
        stats = RoutingStats(4, 2, num_layers=1, selection_bias=[selection_bias])
        stats.update(_record(indices, scores.float(), (4, 50)))
        s = scores.float().double() + (0 if selection_bias is None else selection_bias.double())
        top = np.sort(s.numpy(), axis=1)[:, ::-1]
        kth, nxt = top[:, 1].astype(np.float32), top[:, 2].astype(np.float32)
        relative = (kth - nxt) / np.abs(kth)
        summary = stats.summary(0)
        assert summary["near_tie_share"] == pytest.approx(np.mean(relative < 2.0 ** -8))
        for exponent in (-8, -6, -4, -2):
            assert summary["margin_below"][f"2^{exponent}"] == pytest.approx(np.mean(relative < 2.0 ** exponent))
    plain = RoutingStats(4, 2, num_layers=1)
    plain.update(_record(indices, scores.float(), (4, 50)))
    assert plain.summary(0)["near_tie_share"] >= 5 / 200
    assert RoutingStats(4, 4, num_layers=1).summary(0)["near_tie_share"] is None   # k = E: no (k+1)-th choice


def test_near_ties_of_a_logit_ranking_router_are_taken_on_logits_plus_bias():
    """Kolibri-1 ranks z + b, not σ(z) + b: a record that keeps its logits (``selection``) has its margins taken
    there. Planted: tokens whose z + b is a near-tie while σ(z) + b is far from one, and the reverse."""
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(0.0, 2.0, size=(100, 4)), dtype=torch.float32)
    b = torch.tensor([0.0, 1.5, -0.5, 0.25])
    z[:10] = torch.tensor([3.0, 2.0 - 1.5 + 2.0 ** -12, 2.0 + 0.5, 0.0])  # z + b = 3, 2 + 2⁻¹², 2, 0.25: near-tie
    z[10:20] = torch.tensor([0.0, -1.5, 0.5, 4.0])                       # z + b = 0, 0, 0, 4.25: k=2 ties exactly
    ranked = (z + b).double()
    indices = ranked.topk(2, dim=-1).indices
    top = np.sort(ranked.numpy(), axis=1)[:, ::-1]
    kth, nxt = top[:, 1].astype(np.float32), top[:, 2].astype(np.float32)
    want = np.mean((kth - nxt) / np.maximum(np.abs(kth), np.finfo(np.float32).tiny) < 2.0 ** -8)
    rec = replace(_record(indices, torch.sigmoid(z), (1, 100)), selection=z)
    stats = RoutingStats(4, 2, num_layers=1, selection_bias=[b])
    stats.update(rec)
    assert stats.summary(0)["near_tie_share"] == pytest.approx(want)
    assert want >= 0.2
    on_sigmoid = RoutingStats(4, 2, num_layers=1, selection_bias=[b])
    on_sigmoid.update(replace(rec, selection=None))                 # what the old reading counted: another number
    assert on_sigmoid.summary(0)["near_tie_share"] != pytest.approx(want)
