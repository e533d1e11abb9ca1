"""Steering (``moescope steer``): risk differences recounted from the recorder's raw choices, the
rewritten scores' guarantees (an activated expert is always chosen, a deactivated one never), the
random control, refusals, and the command end to end."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from moescope.analysis.steering import (
    SteerConfig,
    SteeringError,
    activation_rates,
    check_steerable,
    risk_difference,
    steer,
    steering,
)
from moescope.cli import app
from moescope.models import RoutingRecorder
from moescope.models.loading import load_moe_model


def _sets(model, seed=0, windows=12, length=16):
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab // 2, (windows, length), generator=g),
            torch.randint(vocab // 2, vocab, (windows, length), generator=g))


def _choices(model, views, ids):
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        rec.set_batch(ids, torch.ones_like(ids))
        model(input_ids=ids)
        return rec.pop()


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_activation_rates_are_the_recorded_choices_recounted(saved, family):
    model, _, views = load_moe_model(saved(family))
    a, _ = _sets(model)
    rates = activation_rates(model, views, a, batch_size=5)   # batches split differently from the recount
    for rec in _choices(model, views, a):
        li = [v.index for v in views].index(rec.layer)
        per_token = rec.indices.view(a.shape[0], a.shape[1], -1)
        for e in range(views[li].num_experts):
            expected = (per_token == e).any(dim=-1).float().mean(dim=1).numpy()
            np.testing.assert_allclose(rates[:, li, e], expected, atol=1e-7)


def test_risk_difference_and_its_interval():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(40, 2, 4))
    b = rng.uniform(size=(30, 2, 4))
    a[:, 1, 2] += 0.5   # a planted difference on one cell
    delta, interval = risk_difference(a, b, draws=400)
    np.testing.assert_allclose(delta, a.mean(0) - b.mean(0))
    assert interval[1, 2, 0] > 0.3 and (interval[..., 0] <= delta).all() and (delta <= interval[..., 1]).all()
    assert (interval[0, :, 0] < 0).all() and (interval[0, :, 1] > 0).all()   # no difference planted: straddles 0
    _, few = risk_difference(a[:5], b[:5])
    assert np.isinf(few).all()   # under 10 windows a set gets no interval


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe"])
def test_activated_experts_are_always_chosen_and_deactivated_ones_never(saved, family):
    model, _, views = load_moe_model(saved(family))
    a, _ = _sets(model)
    before = _choices(model, views, a)
    cells = [(0, 1), (len(views) - 1, 6)]
    with steering(views, cells, "activate"):
        on = _choices(model, views, a)
    with steering(views, cells, "deactivate"):
        off = _choices(model, views, a)
    for li, e in cells:
        assert (on[li].indices == e).any(dim=1).all()
        assert not (off[li].indices == e).any()
        assert (before[li].indices == e).any() and not (before[li].indices == e).all()  # a real change
    after = _choices(model, views, a)
    for x, y in zip(before, after, strict=True):
        assert torch.equal(x.indices, y.indices)   # nothing left behind


def test_steer_links_experts_and_holds_them_against_random_ones(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    a, b = _sets(model, windows=24)
    res = steer(model, views, {"A": a, "B": b}, SteerConfig(top=3, random_draws=5, draws=200))
    for row in res["linked"]:
        assert row["interval"][0] > 0 and row["delta"] == pytest.approx(row["p_a"] - row["p_b"])
    deltas = [row["delta"] for row in res["linked"]]
    assert deltas == sorted(deltas, reverse=True) and len(deltas) <= 3
    if res["linked"]:
        for direction in ("activate", "deactivate"):
            for name in ("A", "B"):
                r = res["steering"][direction][name]
                assert len(r["random"]) == 5 and 2 / 6 <= r["p_value"] <= 1
                assert r["delta_loss"] == pytest.approx(np.mean(r["per_window"]))
    json.dumps(res, allow_nan=True)


def test_sigmoid_routers_and_bad_requests_are_refused(saved):
    model, _, views = load_moe_model(saved("deepseek_v3"))
    with pytest.raises(SteeringError, match=r"log-softmax .* deepseek_v3 \(sigmoid\)"):
        check_steerable(views)
    model, _, views = load_moe_model(saved("mixtral"))
    a, _ = _sets(model)
    with pytest.raises(SteeringError, match="exactly two text sets; got 1"):
        steer(model, views, {"A": a})
    with pytest.raises(SteeringError, match="direction must be one of activate, deactivate; got 'boost'"):
        with steering(views, [(0, 1)], "boost"):
            pass
    with pytest.raises(SteeringError, match="expert 8 does not exist"):
        with steering(views, [(0, 8)], "activate"):
            pass
    with pytest.raises(ValueError, match="top must be >= 1"):
        SteerConfig(top=0)


def test_steer_command_end_to_end(saved, tmp_path):
    text_a = tmp_path / "a.txt"
    text_a.write_text("def add(a, b):\n    return a + b\n" * 40)
    text_b = tmp_path / "b.txt"
    text_b.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["steer", str(saved("mixtral")), "--contrast", f"code={text_a}",
                                      "--contrast", f"prose={text_b}", "--seq-len", "8", "--max-windows", "12",
                                      "--random-draws", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved_json = json.loads((out / "results.json").read_text())
    assert saved_json["sets"] == ["code", "prose"] and "Risk difference" in (out / "report.html").read_text()
    bad = CliRunner().invoke(app, ["steer", str(saved("mixtral")), "--contrast", f"code={text_a}"])
    assert bad.exit_code == 2 and "exactly two texts" in bad.output
