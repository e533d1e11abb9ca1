"""Distance to a change of route: the score map is checked against the block's own choices before use."""

from dataclasses import replace

import torch

from moescope.analysis.router_boundary import RouterScores, router_boundary, router_inputs
from moescope.models.loading import load_moe_model


def _ids(model, n=2, t=24):
    vocab = model.get_output_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(0))


def test_score_map_reproduces_the_recorded_choices(saved):
    for family in ("mixtral", "qwen2_moe", "deepseek_v3", "kolibri1", "llama4_text"):   # kolibri1 ranks z + b
        model, _, views = load_moe_model(saved(family))
        captured, records = router_inputs(model, views, _ids(model))
        for view, rec in zip(views, records, strict=True):
            scores = RouterScores(view)(captured[view.index])
            if view.n_group > 1:   # group-limited: the best expert's group is usually, not always, chosen
                among = (rec.indices == scores.argmax(dim=-1, keepdim=True)).any(dim=1).float().mean()
                assert among > 0.9
                continue
            k = rec.indices.shape[1]
            best = scores.topk(k, dim=-1).indices.sort(dim=-1).values
            assert torch.equal(best, rec.indices.sort(dim=-1).values)   # the same k experts, every token


def test_boundary_summary_and_a_router_it_does_not_describe(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    res = router_boundary(model, views, _ids(model), points=16, directions=5)
    for r in res:
        assert r["agreement"] == 1.0 and r["points"] <= 16 and r["median_ratio"] > 0
        assert r["theory_median_ratio"] > 1 and r["median_ratio_ci99"][0] <= r["median_ratio"]
    wrong = [replace(v, router_weight=torch.randn_like(v.router_weight)) for v in views]  # not the block's router
    skipped = router_boundary(model, wrong, _ids(model), points=16, directions=5)
    assert all("reproduces only" in r["skipped"] for r in skipped)
