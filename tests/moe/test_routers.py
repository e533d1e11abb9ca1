"""Router semantics by hand (what each family chooses, how it weights, what it reports), and
the checks every router in the catalogue :data:`moescope.moe.routers.ROUTERS` goes through."""

import importlib
import inspect
import math
import pkgutil
import sys

import pytest
import torch
from router_specs import E, H, make_router, router_id
from torch import nn

from moescope.moe import (
    CosineRouter,
    DeepSeekV3Router,
    ExpertChoiceRouter,
    Experts,
    GptOssRouter,
    Llama4Router,
    SoftMoELayer,
    SwitchRouter,
    TopKRouter,
    routers,
)
from moescope.moe.routers import ROUTERS, by_lab_name


def _set(router, weight):
    with torch.no_grad():
        router.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
    return router


def test_topk_by_hand():
    r = _set(TopKRouter(2, 3, 2), [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    res = r(torch.tensor([[2.0, 1.0]]))
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0]), -1)
    assert res.indices.tolist() == [[0, 1]]
    torch.testing.assert_close(res.weights, (p[:2] / p[:2].sum()).unsqueeze(0))
    torch.testing.assert_close(res.scores, p.unsqueeze(0))
    unnorm = _set(TopKRouter(2, 3, 2, normalize_topk=False), r.weight)(torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(unnorm.weights, p[:2].unsqueeze(0))
    assert res.tokens_per_expert.tolist() == [1, 1, 0]


def test_switch_capacity_drops_later_tokens_in_sequence_order():
    r = _set(SwitchRouter(2, 2, expert_capacity=2), [[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]])        # three tokens want expert 0
    res = r(x)
    assert res.indices[:, 0].tolist() == [0, 0, -1, 1]         # the third is dropped, in order
    assert res.weights[2, 0] == 0 and res.stats["drop_rate"].item() == pytest.approx(0.25)
    assert res.tokens_per_expert.tolist() == [2, 1]
    # capacity factor: C = ceil(T/E * cf) = ceil(4/2 * 0.5) = 1
    assert SwitchRouter(2, 2, capacity_factor=0.5).capacity(4) == 1
    # per-sequence scope: two sequences of two tokens each get their own capacity
    seq = _set(SwitchRouter(2, 2, expert_capacity=1, capacity_scope="sequence"), r.weight)
    assert seq(x.view(2, 2, 2)).indices[:, 0].tolist() == [0, -1, 0, 1]


def test_deepseek_bias_selects_but_does_not_weight():
    r = DeepSeekV3Router(2, 4, 1, routed_scaling_factor=1.0)
    _set(r, [[1.0, 0.0], [0.9, 0.0], [0.0, 1.0], [0.0, 0.9]])
    x = torch.tensor([[1.0, 0.0]])
    assert r(x).indices.tolist() == [[0]]
    with torch.no_grad():
        r.selection_bias[1] = 0.5                                   # now expert 1 is selected...
    res = r(x)
    assert res.indices.tolist() == [[1]]
    # ...but weighted by its unbiased score, renormalised: a single expert gets exactly 1
    assert res.weights.item() == pytest.approx(1.0)
    two = DeepSeekV3Router(2, 4, 2, normalize_topk=False, routed_scaling_factor=2.5)
    _set(two, r.weight)
    s = torch.sigmoid(torch.tensor([1.0, 0.9]))
    torch.testing.assert_close(two(x).weights, (2.5 * s).unsqueeze(0))


def test_deepseek_groups_mask_whole_groups():
    # groups {0,1} and {2,3}; group score = sum of top-2: group 0 = s0+s1, group 1 = s2+s3
    r = _set(DeepSeekV3Router(2, 4, 2, n_group=2, topk_group=1), [[3.0, 0.0], [-3.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    res = r(torch.tensor([[1.0, 0.0]]))
    # expert 0 alone is the best expert, but group 1 (2+2) beats group 0 (3-3): experts 2 and 3 win
    assert sorted(res.indices[0].tolist()) == [2, 3]


def test_deepseek_bias_update_moves_toward_balance():
    r = DeepSeekV3Router(4, 4, 1, bias_update_rate=0.01)
    r.update_bias(torch.tensor([10, 0, 5, 5]))
    assert r.selection_bias.tolist() == pytest.approx([-0.01, 0.01, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        r.update_bias(torch.tensor([1, 2]))


def test_llama4_weights_the_input():
    r = _set(Llama4Router(2, 3, 1), [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    res = r(torch.tensor([[0.5, 2.0]]))
    assert res.weight_input and res.indices.tolist() == [[1]]
    assert res.weights.item() == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_gpt_oss_softmax_over_chosen_only():
    r = _set(GptOssRouter(2, 3, 2), [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    with torch.no_grad():
        r.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    res = r(torch.tensor([[1.0, 2.0]]))
    assert sorted(res.indices[0].tolist()) == [1, 2]                # logits 1, 2, 5
    w = torch.softmax(torch.tensor([5.0, 2.0]), -1)
    torch.testing.assert_close(res.weights[0], w)
    torch.testing.assert_close(res.scores[0], torch.softmax(torch.tensor([1.0, 2.0, 5.0]), -1))


def test_expert_choice_each_expert_takes_capacity_tokens():
    r = ExpertChoiceRouter(8, 4, capacity_factor=1.0)
    x = torch.randn(12, 8)
    res = r(x)
    assert res.tokens_per_expert.tolist() == [3, 3, 3, 3]           # C = ceil(1 * 12 / 4)
    for e in range(4):  # expert e's tokens are its top-3 by score
        mine = set(torch.nonzero((res.indices == e).any(-1)).squeeze(-1).tolist())
        assert mine == set(res.scores[:, e].topk(3).indices.tolist())
    mask = torch.ones(12)
    mask[:6] = 0
    masked = r(x, attention_mask=mask)
    assert (masked.indices[:6] == -1).all()


def test_cosine_router_ignores_token_norm():
    r = CosineRouter(6, 5, 2)
    x = torch.randn(4, 6)
    a, b = r(x), r(x * 37.0)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.weights, b.weights)
    assert a.stats["cosine"].abs().max() <= 1.0 + 1e-6
    assert (a.logits.abs() <= 1 / 0.07 + 1e-4).all()


@pytest.mark.parametrize(("make", "match"), [
    (lambda: TopKRouter(4, 3, 4), "top_k must be <= num_experts=3"),
    (lambda: TopKRouter(4, 0, 1), "num_experts=0"),
    (lambda: SwitchRouter(4, 3, capacity_scope="global"), "capacity_scope"),
    (lambda: SwitchRouter(4, 3, capacity_factor=0), "capacity_factor=0"),
    (lambda: DeepSeekV3Router(4, 6, 2, n_group=4), "n_group=4"),
    (lambda: DeepSeekV3Router(4, 8, 2, n_group=2, topk_group=3), "topk_group=3"),
    (lambda: DeepSeekV3Router(4, 8, 5, n_group=4, topk_group=2), "top_k=5 exceeds"),
    (lambda: CosineRouter(4, 3, 1, temperature=0.0), "temperature=0.0"),
    (lambda: ExpertChoiceRouter(4, 3, capacity_factor=-1), "capacity_factor=-1"),
])
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_hidden_size():
    with pytest.raises(ValueError, match="router expects hidden size 4"):
        TopKRouter(4, 3, 1)(torch.randn(2, 5))


# -- the catalogue: every router describes itself and goes through the same checks ----------------
# Each router as its spec builds it, plus settings the shared checks must also see.
CASES = {
    **{router_id(kind): (lambda kind=kind: make_router(kind)) for kind in ROUTERS},
    "SwitchRouter-batch": lambda: SwitchRouter(H, E, capacity_factor=0.8),     # batch-wide capacity, drops
    "DeepSeekV3Router-groups": lambda: DeepSeekV3Router(H, E, 2, n_group=3, topk_group=2),
    "ExpertChoiceRouter-c1.5": lambda: ExpertChoiceRouter(H, E, capacity_factor=1.5),
}
DESCRIPTION = {"scoring": str, "causal": bool, "lab_name": (str, type(None))}  # class attributes and types
PER_INSTANCE = ("max_experts_per_token", "mean_experts_per_token")          # properties


def _router_classes_in_package() -> set[type]:
    """Every nn.Module class a module of moescope.moe.routers defines (scikit-learn's all_estimators)."""
    found = set()
    for info in pkgutil.iter_modules(routers.__path__):
        module = importlib.import_module(f"{routers.__name__}.{info.name}")
        found |= {obj for obj in vars(module).values()
                  if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__}
    return found


def _missing_description(kind: type) -> list[str]:
    """The parts of a router's self-description that ``kind`` lacks (or has of the wrong type)."""
    missing = [name for name, kinds in DESCRIPTION.items() if not isinstance(getattr(kind, name, ...), kinds)]
    if not inspect.ismethod(getattr(kind, "from_spec", None)):                 # a classmethod, bound to kind
        missing.append("from_spec")
    return missing + [name for name in PER_INSTANCE if not isinstance(getattr(kind, name, None), property)]


def test_every_router_class_is_catalogued_and_describes_itself():
    found = _router_classes_in_package()
    assert found, "no router class found: the discovery is broken"
    missing = found - set(ROUTERS)
    assert not missing, f"router classes missing from moescope.moe.routers.ROUTERS: {missing}"
    assert len(set(ROUTERS)) == len(ROUTERS)
    problems = {kind.__name__: m for kind in ROUTERS if (m := _missing_description(kind))}
    assert not problems, f"routers that do not describe themselves: {problems}"
    assert all(kind.scoring in ("softmax", "sigmoid") for kind in ROUTERS)
    lab = [kind.lab_name for kind in ROUTERS if kind.lab_name is not None]
    assert len(set(lab)) == len(lab) and list(by_lab_name()) == lab
    assert all(by_lab_name()[kind.lab_name] is kind for kind in ROUTERS if kind.lab_name is not None)


def test_the_checks_catch_an_uncatalogued_or_undescribed_router(tmp_path, monkeypatch):
    (tmp_path / "newrouter.py").write_text("from torch import nn\n\nclass NewRouter(nn.Module):\n"
                                           "    scoring = 'softmax'\n    causal = 1\n")
    monkeypatch.setattr(routers, "__path__", [*routers.__path__, str(tmp_path)])
    try:
        (new,) = _router_classes_in_package() - set(ROUTERS)               # found, and not in the catalogue
    finally:
        monkeypatch.delitem(sys.modules, f"{routers.__name__}.newrouter", raising=False)
    assert new.__name__ == "NewRouter"
    assert _missing_description(new) == ["causal", "lab_name", "from_spec", *PER_INSTANCE]
    assert _missing_description(TopKRouter) == []


@pytest.mark.parametrize("kind", ROUTERS, ids=router_id)
def test_router_builds_from_a_spec_and_reports_its_experts_per_token(kind):
    torch.manual_seed(0)
    r = make_router(kind, top_k=3, capacity_factor=1.5)
    assert type(r) is kind and r.num_experts == E and r.hidden == H
    assert isinstance(r.max_experts_per_token, int) and 1 <= r.max_experts_per_token <= E
    assert isinstance(r.mean_experts_per_token, float) and 0 < r.mean_experts_per_token <= r.max_experts_per_token
    x = torch.randn(4, 10, H)
    res = r(x)
    routed = (res.indices >= 0).sum(-1)                                    # (T,) experts each token got
    assert res.indices.shape[-1] <= r.max_experts_per_token and int(routed.max()) <= r.max_experts_per_token
    # on average at most the stated mean (+E/T: expert choice rounds each expert's capacity up)
    assert float(routed.float().mean()) <= r.mean_experts_per_token + E / routed.numel() + 1e-6
    if not hasattr(r, "capacity"):                                         # no capacity: exactly k each
        assert (routed == r.max_experts_per_token).all() and r.mean_experts_per_token == r.max_experts_per_token


@pytest.mark.parametrize("name", list(CASES))
def test_scores_are_the_stated_scoring_of_the_logits(name):
    torch.manual_seed(0)
    r = CASES[name]()
    res = r(torch.randn(2, 7, H))
    expected = {"softmax": lambda z: torch.softmax(z, -1), "sigmoid": torch.sigmoid}[type(r).scoring](res.logits)
    torch.testing.assert_close(res.scores, expected)
    if type(r).scoring == "softmax":
        torch.testing.assert_close(res.scores.sum(-1), torch.ones(res.scores.shape[0]))


@pytest.mark.parametrize("kind", ROUTERS, ids=router_id)
def test_causal_flag_is_true_to_the_router(kind):
    """A causal router's choices at positions < cut ignore every token at >= cut; a non-causal
    one (here: experts choosing among the batch) changes some of them."""
    torch.manual_seed(0)
    r = make_router(kind, capacity_factor=0.5)            # small capacity: Switch drops, in order
    x = torch.randn(3, 12, H)
    changed = x.clone()
    cut = 5
    changed[:, cut:] = torch.randn(3, 12 - cut, H)
    a, b = r(x), r(changed)
    early = torch.arange(36).view(3, 12)[:, :cut].reshape(-1)             # flattened positions < cut

    def same(u, v):
        return u.shape == v.shape and torch.equal(u, v)

    kept = same(a.indices[early], b.indices[early]) and same(a.weights[early], b.weights[early])
    assert kept == kind.causal


def test_soft_moe_describes_itself_like_a_router():
    """Soft MoE is a layer, not a router, but the lab offers it beside them: same description."""
    assert SoftMoELayer.causal is False and SoftMoELayer.lab_name == "soft" and SoftMoELayer.scoring == "soft"
    layer = SoftMoELayer(hidden=H, experts=Experts(E, H, 8), slots_per_expert=2)
    assert layer.max_experts_per_token == E
    x = torch.randn(2, 9, H)
    changed = x.clone()
    changed[:, 5:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(layer(x).hidden[:, :5], layer(changed).hidden[:, :5])   # not causal


@pytest.mark.parametrize("name", list(CASES))
def test_aux_losses_lazy_only_in_inference(name):
    """Under no_grad the losses wait for their first read and then equal the eager ones; with
    gradients (training) and inside global_token_sums (ranks must all-reduce in step) they are
    computed at once."""
    from moescope.moe.losses import global_token_sums
    from moescope.moe.result import LazyLosses

    torch.manual_seed(0)
    router = CASES[name]()
    x = torch.randn(2, 5, H)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    eager = router(x, attention_mask=mask)
    assert isinstance(eager.aux_losses, dict) and eager.aux_losses
    assert all(v.requires_grad for v in eager.aux_losses.values())
    with torch.no_grad():
        lazy = router(x, attention_mask=mask)
    assert isinstance(lazy.aux_losses, LazyLosses) and set(lazy.aux_losses) == set(eager.aux_losses)
    for key, value in eager.aux_losses.items():
        torch.testing.assert_close(lazy.aux_losses[key], value.detach(), rtol=0, atol=0)
        assert not lazy.aux_losses[key].requires_grad                 # read outside no_grad: still no graph
    with pytest.raises(KeyError):
        lazy.aux_losses["nope"]
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with torch.no_grad(), global_token_sums():
            summed = router(x, attention_mask=mask).aux_losses
    finally:
        dist.destroy_process_group()
    assert isinstance(summed, dict)
    for key, value in eager.aux_losses.items():                        # one rank: the sums are its own
        torch.testing.assert_close(summed[key], value.detach())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(("shape", "all_padding"), [((0, 12), False), ((2, 0, 12), False), ((0, 4, 12), False),
                                                     ((2, 3, 12), True)])
def test_no_tokens_gives_empty_output_and_zero_losses(name, shape, all_padding):
    """An empty batch (or one of padding only) is no error and no NaN: the output is empty (or
    zero), every auxiliary loss is 0 — a mean over nothing would poison the training loss."""
    from moescope.moe import MoELayer

    torch.manual_seed(0)
    layer = MoELayer(router=CASES[name](), experts=Experts(E, H, 8))
    x = torch.randn(shape, requires_grad=True)
    mask = torch.zeros(shape[:-1]) if all_padding else None
    out = layer(x, attention_mask=mask)
    assert out.hidden.shape == x.shape and out.routing.tokens_per_expert.shape == (E,)
    losses = dict(out.routing.aux_losses)
    assert losses and all(float(v.detach()) == 0.0 for v in losses.values()), losses
    (out.hidden.sum() + sum(losses.values())).backward()
    assert torch.isfinite(x.grad).all()
    for key, value in (out.routing.stats or {}).items():
        if torch.is_tensor(value) and value.is_floating_point():
            assert torch.isfinite(value).all(), key
