"""moescope's own MoELayer and SoftMoELayer, inside a tiny torch model, are found and recorded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moescope.models import RoutingRecorder, find_moe_layers
from moescope.moe import (
    DeepSeekV3Router,
    ExpertChoiceRouter,
    Experts,
    Llama4Router,
    MoELayer,
    SharedExpert,
    SoftMoELayer,
    SwitchRouter,
    TopKRouter,
)

H, I, E, V = 16, 12, 6, 50


class TinyLM(nn.Module):
    """Embedding -> three MoE layers (top-2 + shared, DeepSeek-V3, Soft) -> head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, H)
        self.blocks = nn.ModuleList([
            MoELayer(router=TopKRouter(H, E, 2), experts=Experts(E, H, I), shared=SharedExpert(H, 20)),
            MoELayer(router=DeepSeekV3Router(H, E, 2, n_group=3, topk_group=2), experts=Experts(E, H, I)),
            SoftMoELayer(hidden=H, experts=Experts(E, H, I), slots_per_expert=1),
        ])
        with torch.no_grad():
            self.blocks[1].router.selection_bias.copy_(torch.randn(E))
        self.head = nn.Linear(H, V)

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = x + block(x, attention_mask=attention_mask).hidden
        return self.head(x)


def _batch():
    ids = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return ids, mask


def test_moescope_layers_are_found_and_recorded():
    model = TinyLM().eval()
    views = find_moe_layers(model)
    assert [v.name for v in views] == ["blocks.0", "blocks.1", "blocks.2"]
    assert [v.scoring for v in views] == ["softmax", "sigmoid", "soft"]
    assert [v.top_k for v in views] == [2, 2, E]
    assert views[1].selection_bias is not None and (views[1].n_group, views[1].topk_group) == (3, 2)
    assert len(views[0].shared) == 1 and views[1].shared == ()
    ids, mask = _batch()
    inputs, outputs = {}, {}
    hooks = [v.module.register_forward_pre_hook(lambda m, a, kw, i=v.index: inputs.__setitem__(i, a[0]),
                                                with_kwargs=True) for v in views]
    hooks += [v.module.register_forward_hook(lambda m, a, o, i=v.index: outputs.__setitem__(i, o)) for v in views]
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        model(ids, attention_mask=mask)       # positional ids, keyword mask: both captured
    for h in hooks:
        h.remove()
    records = rec.records
    assert len(records) == 3
    for view, record in zip(views, records, strict=True):
        assert record.batch_shape == (3, 7)
        assert torch.equal(record.mask, mask.bool().reshape(-1))
        assert torch.equal(record.token_ids, ids.reshape(-1))
        routing = outputs[view.index].routing
        # Same choices as the layer's own result (as sets per token), sorted by weight.
        for got, want in ((record.indices, routing.indices), (record.weights, routing.weights)):
            assert torch.equal(got.sort(-1).values, want.float().sort(-1).values if got.is_floating_point()
                               else want.sort(-1).values)
        assert (record.weights[:, :-1] >= record.weights[:, 1:]).all()
    # Top-2 router: the recorded choice is the router's, called again on the captured input.
    again = views[0].module.router(inputs[0])
    assert torch.equal(records[0].indices.sort(-1).values, again.indices.sort(-1).values)
    # Soft: scores are each token's combine mass per expert (rows sum to 1); every expert used.
    torch.testing.assert_close(records[2].scores.sum(-1), torch.ones(21))
    assert records[2].indices.sort(-1).values.eq(torch.arange(E)).all()


def test_moescope_view_matrices_reproduce_the_layer():
    model = TinyLM().eval()
    view = find_moe_layers(model)[0]
    ids, _ = _batch()
    x = model.embed(ids).reshape(-1, H)
    with RoutingRecorder(model, [view]) as rec, torch.no_grad():
        out = view.module(x)
    record = rec.records[0]
    assert record.batch_shape == (1, 21) and record.mask.all() and record.token_ids is None
    with torch.no_grad():
        got = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for e, w in zip(record.indices[t].tolist(), record.weights[t].tolist(), strict=True):
                ew = view.expert(e)
                got[t] += w * (ew.down @ (F.silu(ew.gate @ x[t]) * (ew.up @ x[t])))
            s = view.shared[0]()
            got[t] += s.down @ (F.silu(s.gate @ x[t]) * (s.up @ x[t]))
    torch.testing.assert_close(got, out.hidden, rtol=1e-5, atol=1e-6)


def test_soft_view_centroids_are_the_slots():
    layer = SoftMoELayer(hidden=H, experts=Experts(E, H, I), slots_per_expert=2)
    view = find_moe_layers(nn.Sequential(layer))[0]
    assert view.router_weight.shape == (E, H) and view.top_k == E and view.scoring == "soft"
    torch.testing.assert_close(view.router_weight[3], layer.slots[:, 6:8].mean(1).detach())


@pytest.mark.parametrize("router, top_k", [(SwitchRouter(H, E, expert_capacity=2), 1), (Llama4Router(H, E, 2), 2),
                                           (ExpertChoiceRouter(H, E), E)])
def test_every_moescope_router_is_recordable(router, top_k):
    layer = MoELayer(router=router, experts=Experts(E, H, I, gate="none" if top_k == 1 else "swiglu"))
    view = find_moe_layers(layer)[0]
    assert view.name == "" and view.top_k == top_k
    assert (view.expert(0).gate is None) == (top_k == 1)
    x = torch.randn(2, 5, H)
    with RoutingRecorder(layer, [view]) as rec, torch.no_grad():
        out = layer(x)
    record = rec.records[0]
    assert record.batch_shape == (2, 5) and record.indices.shape[1] <= view.top_k
    assert torch.equal((record.indices >= 0).sum(), (out.routing.indices >= 0).sum())
