"""The permutation null of expert subspaces: planted groupings with known answers, the feasibility bound."""

import numpy as np
import pytest
import torch

from moescope.analysis.expert_null import (
    feasible_min_overlap,
    grouping_null,
    hidden_units,
    overlap_of_groups,
    units_rank,
)
from moescope.geometry import principal_angles

E, I, H = 8, 32, 64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_overlap_equals_sum_of_squared_cosines_of_principal_angles():
    units = torch.randn(2, 3, 20, 2, 16, generator=_gen(), dtype=torch.float64)
    got = overlap_of_groups(units, 4)
    for d in range(2):
        w = units[d].reshape(3, 40, 16)
        bases = torch.linalg.svd(w, full_matrices=False).Vh[:, :4].transpose(1, 2)         # (3, 16, 4)
        pairs = [(0, 1), (0, 2), (1, 2)]
        ref = np.mean([torch.cos(principal_angles(bases[a], bases[b])).square().sum().item() for a, b in pairs])
        assert got[d].item() == pytest.approx(ref, rel=1e-5)      # eigenvectors in float32


def test_iid_units_match_their_null():
    r = grouping_null(torch.randn(E, I, 2, H, generator=_gen(1)), draws=100, seed=0)
    assert r["ratio"] == pytest.approx(1.0, abs=0.03)
    assert 0.05 < r["p_less"] and 0.05 < r["p_greater"]


def test_disjoint_experts_are_far_below_random_groupings():
    u = 0.01 * torch.randn(E, I, 2, H, generator=_gen(2))
    for e in range(E):                         # expert e reads only coordinates [8e, 8e + 8)
        u[e, :, :, 8 * e:8 * e + 8] += torch.randn(I, 2, 8, generator=_gen(10 + e))
    r = grouping_null(u, draws=100, seed=0)
    assert r["feasible"] and r["ratio"] < 0.05 and r["p_less"] == pytest.approx(1 / 101)
    assert r["ratio_to_isotropic"] < 0.05


def test_one_shared_subspace_matches_its_permutation_null_but_not_haar():
    basis = torch.linalg.qr(torch.randn(H, 6, generator=_gen(3)))[0]
    u = torch.randn(E, I, 2, 6, generator=_gen(4)) @ basis.T + 0.01 * torch.randn(E, I, 2, H, generator=_gen(5))
    r = grouping_null(u, draws=100, seed=0)
    assert r["ratio"] == pytest.approx(1.0, abs=0.05)          # the grouping is arbitrary ...
    assert r["ratio_to_isotropic"] > 5                         # ... but the subspaces coincide


def test_rank_rule_and_fixed_rank():
    u = torch.randn(E, I, 2, H, generator=_gen(6))
    assert 1 <= units_rank(u) <= H // 2
    assert grouping_null(u, rank=5, draws=20)["rank"] == 5
    with pytest.raises(ValueError, match="rank must lie in"):
        grouping_null(u, rank=H + 1, draws=20)
    with pytest.raises(ValueError, match="draws must be"):
        grouping_null(u, draws=5)
    with pytest.raises(ValueError, match="units must be"):
        grouping_null(u[0], draws=20)


def test_same_seed_same_null():
    u = torch.randn(4, 16, 2, 16, generator=_gen(7))
    assert grouping_null(u, draws=30, seed=3)["null"] == grouping_null(u, draws=30, seed=3)["null"]


@pytest.mark.parametrize(("e", "r", "h"), [(4, 2, 8), (8, 18, 64), (5, 3, 9), (3, 3, 6)])
def test_feasible_minimum_bounds_every_configuration(e, r, h):
    bound = feasible_min_overlap(e, r, h)
    assert bound == max(0.0, r * (e * r - h) / (h * (e - 1)))
    g = _gen(e * 100 + r)
    for _ in range(20):                                          # random subspaces never beat the bound
        q = torch.linalg.qr(torch.randn(e, h, r, generator=g, dtype=torch.float64))[0]
        cross = torch.einsum("ahr,bhs->abrs", q, q).square().sum((-1, -2))
        assert cross[~torch.eye(e, dtype=torch.bool)].mean().item() >= bound - 1e-9
    if e * r <= h:                                               # orthogonal blocks reach 0
        assert bound == 0.0


def test_hidden_units_of_a_view():
    from moescope.models import find_moe_layers
    from moescope.moe import Experts, MoELayer, TopKRouter

    layer = MoELayer(router=TopKRouter(16, 4, 2), experts=Experts(4, 16, 8))
    (view,) = find_moe_layers(torch.nn.Sequential(layer))
    u = hidden_units(view)
    assert u.shape == (4, 8, 2, 16)
    w = view.expert(1)
    assert torch.equal(u[1, 3, 0], w.gate[3].double()) and torch.equal(u[1, 3, 1], w.up[3].double())
