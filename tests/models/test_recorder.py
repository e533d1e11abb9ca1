"""RoutingRecorder mechanics: hooks come off, passes, batch capture, KV cache, sorting, Llama 4 zeros."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moescope.models import RoutingRecorder, find_moe_layers, sort_by_weight
from moescope.models.view import MoELayerView


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _batch(tok, texts=("a b c d e f", "x = 3")):
    return tok(list(texts), return_tensors="pt", padding=True)


def test_hooks_are_removed_on_exit_and_on_exceptions(loaded):
    model, _, views = loaded("mixtral")
    before = _hook_count(model)
    with RoutingRecorder(model, views):
        assert _hook_count(model) == before + 2 + 2 * len(views)
    assert _hook_count(model) == before
    with pytest.raises(KeyError), RoutingRecorder(model, views):
        raise KeyError("boom")
    assert _hook_count(model) == before


def test_a_forward_that_raises_leaves_no_half_pass(loaded):
    model, tok, views = loaded("mixtral")
    batch = _batch(tok)
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        model(**batch)
        good = rec.records
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=torch.full((1, 3), 10_000))          # out of the vocabulary
        assert [r.indices.shape for r in rec.records] == [r.indices.shape for r in good]
        model(**batch)
        assert len(rec.records) == len(views)


def test_one_record_per_layer_per_pass_and_on_pass(loaded):
    model, tok, views = loaded("qwen3_moe")
    passes = []
    with RoutingRecorder(model, views, on_pass=passes.append) as rec, torch.no_grad():
        model(**_batch(tok))
        model(**_batch(tok, ["only one sequence here"]))
        last = rec.pop()
        assert rec.records == []
    assert len(passes) == 2 and all(len(p) == len(views) for p in passes)
    assert [r.layer for r in last] == [v.index for v in views]
    assert last[0].batch_shape == passes[1][0].batch_shape != passes[0][0].batch_shape


def test_set_batch_takes_precedence(loaded):
    model, tok, views = loaded("olmoe")
    batch = _batch(tok)
    mine = torch.ones_like(batch["attention_mask"])
    mine[0, 0] = 0
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        rec.set_batch(batch["input_ids"], mine)
        model(**batch)
        assert torch.equal(rec.records[0].mask, mine.bool().reshape(-1))
        model(**batch)                               # set_batch was for one pass only
        assert torch.equal(rec.records[0].mask, batch["attention_mask"].bool().reshape(-1))
        with pytest.raises(ValueError, match="2-D"):
            rec.set_batch(batch["input_ids"].reshape(-1))


def test_kv_cache_step_uses_the_last_mask_columns(loaded):
    model, tok, views = loaded("mixtral")
    batch = tok(["a b c d e f", "x"], return_tensors="pt", padding=True, padding_side="left")
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        out = model(**batch, use_cache=True)
        step_ids = torch.tensor([[5], [6]])
        mask = torch.cat([batch["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1)
        model(input_ids=step_ids, attention_mask=mask, cache=out.past_key_values, use_cache=True)
    r = rec.records[0]
    assert r.batch_shape == (2, 1) and r.mask.all() and torch.equal(r.token_ids, step_ids.reshape(-1))


def test_views_without_a_live_module_are_refused(loaded):
    model, _, views = loaded("mixtral")
    v = views[0]
    disk = MoELayerView(name=v.name, index=0, family=v.family, num_experts=v.num_experts, top_k=v.top_k,
                        scoring=v.scoring, router_weight=v.router_weight, expert=v.expert)
    with pytest.raises(ValueError, match="no live module"):
        RoutingRecorder(model, [disk])


def _llama4_block():
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    cfg = Llama4TextConfig(hidden_size=8, intermediate_size=6, intermediate_size_mlp=10, num_local_experts=4,
                           num_experts_per_tok=2)
    block = Llama4TextMoe(cfg).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
        block.router.weight.zero_()
        block.router.weight[:, 0] = torch.tensor([5.0, -200.0, -300.0, -400.0])  # logits of x = e_0
        block.router.weight[:, 1] = torch.tensor([1.0, 2.0, -1.0, -2.0])         # logits of x = e_1
    return block


def test_llama4_chosen_expert_with_underflowed_score_is_marked_unused():
    """sigmoid(-200) is exactly 0 in float32: expert 1 is chosen (top-2 of the logits) but
    contributes expert(0 · x) = 0, so the record marks the slot -1 (the documented caveat)."""
    block = _llama4_block()
    view = find_moe_layers(block)[0]
    x = torch.eye(8)[:2].reshape(1, 2, 8)
    with RoutingRecorder(block, [view]) as rec, torch.no_grad():
        out, _ = block(x)
    r = rec.records[0]
    assert r.indices.tolist() == [[0, -1], [1, 0]]
    torch.testing.assert_close(r.weights, torch.tensor([[torch.sigmoid(torch.tensor(5.0)), 0.0],
                                                       [torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(
                                                           torch.tensor(1.0))]]))
    with torch.no_grad():  # the block's output for token 0 is expert 0 and the shared expert alone
        e0 = block.experts.gate_up_proj.new_zeros(4, 8)
        e0[0] = torch.sigmoid(torch.tensor(5.0)) * x[0, 0]
        routed = block.experts(e0.reshape(4, 8)).reshape(4, 1, 8).sum(0)
        torch.testing.assert_close(out[0], (routed + block.shared_expert(x[0, :1]))[0])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_sort_by_weight_orders_rows_and_keeps_pairs(t, k, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(-1, 9, (t, k), generator=g)
    w = torch.rand(t, k, generator=g).masked_fill(idx < 0, 0.0)
    si, sw = sort_by_weight(idx, w)
    key = sw.masked_fill(si < 0, float("-inf"))
    assert (key[:, :-1] >= key[:, 1:]).all()
    for row in range(t):
        assert sorted(zip(idx[row].tolist(), w[row].tolist(), strict=True)) == \
            sorted(zip(si[row].tolist(), sw[row].tolist(), strict=True))
        n_valid = int((idx[row] >= 0).sum())
        assert (si[row, n_valid:] < 0).all()
