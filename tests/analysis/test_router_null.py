"""The random-direction router null: rows keep their norms, change direction, and come back."""

import pytest
import torch

from moescope.analysis.router_null import angle_agreement_top1, random_router_rows, swappable
from moescope.models import find_moe_layers
from moescope.moe import Experts, MoELayer, TopKRouter


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(MoELayer(router=TopKRouter(16, 6, 2), experts=Experts(6, 16, 8)))


def test_rows_keep_norms_change_direction_and_are_restored():
    model = _model()
    views = find_moe_layers(model)
    assert swappable(model, views)
    before = model[0].router.weight.detach().clone()
    with random_router_rows(views, torch.Generator().manual_seed(1)):
        during = model[0].router.weight.detach().clone()
        assert torch.allclose(during.norm(dim=-1), before.norm(dim=-1), rtol=1e-6)
        cos = torch.nn.functional.cosine_similarity(during, before, dim=-1)
        assert cos.abs().max() < 0.99
    assert torch.equal(model[0].router.weight, before)


def test_rows_are_restored_on_error():
    model = _model()
    before = model[0].router.weight.detach().clone()
    with pytest.raises(RuntimeError), random_router_rows(find_moe_layers(model), torch.Generator().manual_seed(1)):
        raise RuntimeError("boom")
    assert torch.equal(model[0].router.weight, before)


def test_angle_agreement_by_hand():
    router = torch.tensor([[1.0, 0.0], [0.0, 10.0]])        # expert 1's row is 10x longer
    x = torch.tensor([[1.0, 0.2], [1.0, -0.5], [0.0, 1.0]])
    # dot: [1, 2] -> 1, [1, -5] -> 0, [0, 10] -> 1; cos: [0.98, 0.196] -> 0, [.89, -.45] -> 0, [0, 1] -> 1
    assert angle_agreement_top1(x, router) == pytest.approx(2 / 3)
    assert angle_agreement_top1(x, router, torch.tensor([0.0, -100.0])) == pytest.approx(2 / 3)
