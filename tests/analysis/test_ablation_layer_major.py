"""Layer-major exact ablation (``AblationConfig(order="layer")``, the default for a layer-streamed model).

Each decoder layer is read once per pass and every stream active at its depth goes through it. The
results must equal the cell-by-cell order (the residual cache, itself checked against whole forwards
and transformers oracles in ``test_ablation.py``) on the same batches, streamed and in memory, for a
softmax family and a selection-bias family (DeepSeek-V3 with a bias planted on an ablated expert),
over several MoE layers and experts and with the cells split over several passes; the streamer's
measured layer reads must be passes · L, and the cell-by-cell order's must be the count reported
beside them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import tiny_checkpoints
import torch
from test_ablation_not_resident import CARRIES_STATE, _vocab, planted_checkpoint

from moescope.analysis.ablation import AblationConfig, ablate
from moescope.analysis.residual_replay import streams_per_pass
from moescope.analysis.window_loss import AblationError
from moescope.models import BY_MODEL_TYPE, BY_NAME
from moescope.models.loading import load_moe_model
from moescope.models.streaming import DEFAULT_BUFFER, stream_moe_model

EXPERTS = (0, 3, 5)


def _domains(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {"a": torch.randint(0, vocab, (5, 8), generator=g), "b": torch.randint(0, vocab, (3, 8), generator=g)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> a tiny checkpoint with 4 decoder layers (DeepSeek-V3: 3 MoE layers after a dense one, expert 5's
    selection bias planted; Mixtral: 4 MoE layers)."""
    root = tmp_path_factory.mktemp("layer-major")
    return {f: planted_checkpoint(root / f, f, layers=4, expert=5) for f in ("deepseek_v3", "mixtral")}


def _same(got, expected, atol=1e-6) -> None:
    for d in expected.base:
        np.testing.assert_allclose(got.base[d], expected.base[d], atol=atol, rtol=0)
        for mode in expected.delta:
            np.testing.assert_allclose(got.delta[mode][d], expected.delta[mode][d], atol=atol, rtol=0)
    assert got.measured == expected.measured


@pytest.mark.parametrize("family", ["deepseek_v3", "mixtral"])
def test_streamed_layer_major_equals_cell_by_cell(checkpoints, family):
    path = checkpoints[family]
    model, _, views = load_moe_model(path)
    domains = _domains(_vocab(model))
    cfg = AblationConfig(modes=("reroute",), experts=EXPERTS, exact="all", batch_size=2, draws=100)
    in_memory = ablate(model, views, domains, cfg)
    assert in_memory.order == "cell" and in_memory.layer_loads is None and in_memory.cell_layer_loads is None
    assert np.abs(in_memory.delta["reroute"]["a"]).max() > 1e-3

    L = model.config.num_hidden_layers
    starts = [int(v.name.split(".")[2]) for v in views]
    batches = math.ceil(5 / 2) + math.ceil(3 / 2)
    cell_loads = batches * (L + sum(L - s for s in starts for _ in EXPERTS))

    streamed, _, streamed_views = stream_moe_model(path)
    streamer = streamed.moescope_streamer
    cell = ablate(streamed, streamed_views, domains, replace(cfg, order="cell"))
    assert cell.order == "cell" and cell.layer_loads == cell.cell_layer_loads == cell_loads
    _same(cell, in_memory)

    steps = []
    layer = ablate(streamed, streamed_views, domains, cfg, on_step=lambda *a: steps.append(a))  # auto: layer-major
    assert layer.order == "layer"
    _same(layer, in_memory)
    # one pass: each layer read once, and once more by the plain forward that checks the replay
    assert layer.layer_loads == 2 * L and layer.cell_layer_loads == cell_loads
    assert layer.cost == pytest.approx(in_memory.cost + 1) and layer.naive_cost == in_memory.naive_cost
    jobs = len(views) * len(EXPERTS)
    assert steps == [(i + 1, jobs) for i in range(jobs)]

    # a buffer for the intact stream and two ablated ones: the cells in ceil(jobs / 2) passes, the same numbers
    tokens = sum(ids.numel() for ids in domains.values())
    buffer = 3 * tokens * model.config.hidden_size * 4
    assert streams_per_pass(streamed, tokens, buffer) == 2
    chunked = ablate(streamed, streamed_views, domains, replace(cfg, buffer=buffer))
    _same(chunked, in_memory)
    passes = math.ceil(jobs / 2)
    assert chunked.layer_loads == (passes + 1) * L < cell_loads
    # later passes re-run the intact stream below their highest starting layer
    assert chunked.cost > in_memory.cost + 1

    # the model is whole again: original layers, weights back on the meta device, no hook left behind
    assert all(type(m).__name__.endswith("DecoderLayer") for m in streamer.layers)
    assert all(p.is_meta for m in streamer.layers for p in m.parameters())
    assert all(len(m._forward_hooks) == 1 and len(m._forward_pre_hooks) == 1 for m in streamer.layers)
    assert torch._C._len_torch_function_stack() == 0
    again = ablate(streamed, streamed_views, {"a": domains["a"]}, replace(cfg, experts=(3,)))
    np.testing.assert_allclose(again.base["a"], in_memory.base["a"], atol=1e-6, rtol=0)


def test_in_memory_layer_major_in_both_modes(checkpoints):
    """Layer-major needs no streamer: zero mode (the down projection zeroed while its own layer runs) and
    re-route on the in-memory model equal the cell-by-cell order."""
    model, _, views = load_moe_model(checkpoints["mixtral"])
    domains = _domains(_vocab(model))
    cfg = AblationConfig(layers=(1, 3), experts=(2, 5), exact="all", batch_size=3, draws=100)
    cell = ablate(model, views, domains, cfg)
    layer = ablate(model, views, domains, replace(cfg, order="layer"))
    assert layer.order == "layer" and layer.layer_loads is None
    _same(layer, cell)
    assert set(layer.delta) == {"reroute", "zero"}
    assert all(np.abs(layer.delta[m]["b"]).max() > 1e-4 for m in layer.delta)
    out = layer.to_dict()
    assert out["order"] == "layer" and out["layer_loads"] is None


def test_streams_per_pass_is_derived_from_the_buffer(checkpoints):
    model, _, _ = load_moe_model(checkpoints["mixtral"])
    H = model.config.hidden_size
    per_stream = 100 * H * 4  # 100 tokens in float32
    assert streams_per_pass(model, 100, 5 * per_stream) == 4       # the intact stream and four ablated ones
    assert streams_per_pass(model, 100, 5 * per_stream - 1) == 3
    assert streams_per_pass(model, 100, per_stream) == 1            # at least one, even over the buffer
    assert streams_per_pass(model, 100, None) == DEFAULT_BUFFER // per_stream - 1
    assert streams_per_pass(model, 100, "1MiB") == 2**20 // per_stream - 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"order": "row"}, "order must be one of auto, cell, layer; got 'row'"),
    ({"buffer": 0}, r"^buffer \(bytes of hidden states .*\): memory size must be positive; got 0"),
    ({"buffer": "lots"}, "^buffer .*memory size 'lots' is not a size"),
])
def test_bad_order_and_buffer_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AblationConfig(**kwargs)


def test_a_forward_with_state_between_layers_is_not_replayed_layer_major(tmp_path):
    """Inkling-2 feeds the hidden states at block boundaries to later layers and the head: the plain-forward
    check catches it; ``order="layer"`` is refused with the reason, ``"auto"`` measures cell by cell."""
    path = planted_checkpoint(tmp_path / "inkling2_text", "inkling2_text", expert=5)
    model, _, views = load_moe_model(path)
    domains = _domains(_vocab(model))
    cfg = AblationConfig(modes=("reroute",), experts=(5,), exact="all", batch_size=4, draws=100)
    expected = ablate(model, views, domains, cfg)
    streamed, _, streamed_views = stream_moe_model(path)
    steps = []
    with pytest.raises(AblationError, match=r"carries state between decoder layers.*use order='cell'"):
        ablate(streamed, streamed_views, domains, replace(cfg, order="layer"), on_step=lambda *a: steps.append(a))
    assert steps == []  # refused before any cell was reported
    got = ablate(streamed, streamed_views, domains, cfg)
    assert got.order == "cell"
    _same(got, expected, atol=1e-5)


def _causal(tiny: str) -> bool:
    family = BY_NAME.get(tiny) or BY_MODEL_TYPE[tiny]
    return family.auto_class == "AutoModelForCausalLM"  # Switch's encoder has no next-token loss to ablate


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(n for n in tiny_checkpoints.BUILDERS if _causal(n)))
def test_every_family_streamed_equals_in_memory(family, saved):
    """Every family's tiny checkpoint, streamed: ``order="auto"`` is layer-major except where the check finds
    state carried between layers (then cell by cell), and equals the in-memory map."""
    model, _, views = load_moe_model(saved(family))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, _vocab(model), (2, 8), generator=g)
    cfg = AblationConfig(modes=("reroute",), experts=(1, 4), exact="all", batch_size=2, draws=100)
    expected = ablate(model, views, {"d": ids}, cfg)
    streamed, _, streamed_views = stream_moe_model(saved(family))
    got = ablate(streamed, streamed_views, {"d": ids}, cfg)
    assert got.order == ("cell" if family in CARRIES_STATE else "layer")
    _same(got, expected, atol=1e-5)


def test_moescope_ablate_under_a_budget_runs_layer_major_in_what_it_leaves(saved):
    """``run_ablation`` of a streamed model with ``max_memory``: the buffer is the budget less the streamed
    minimum, so a budget three streams above it splits the 16 cells into passes of two, and the map is the
    in-memory one."""
    from test_ablate import CODE, PROSE

    from moescope.analysis.ablate import AblateConfig, run_ablation
    from moescope.analysis.analyze import Source
    from moescope.models.streaming import memory_plan

    path = saved("mixtral")
    kw = dict(path=path, sources=(Source("code", CODE, "code"), Source("prose", PROSE, "prose")), modes=("reroute",),
              exact="all", seq_len=8, max_windows=6, batch_size=3, draws=200)
    plain = run_ablation(AblateConfig(**kw))
    tokens = sum(t["tokens"] for t in plain["text"].values())
    plan = memory_plan(path, tokens=8 * 3)
    per_stream = tokens * plan.per_token
    streamed = run_ablation(AblateConfig(**kw, stream_layers=True, max_memory=plan.streamed + 3 * per_stream))
    cost = streamed["cost"]
    assert cost["order"] == "layer" and plain["cost"]["order"] == "cell" and plain["cost"]["layer_loads"] is None
    L, jobs = plan.num_layers, 16
    assert cost["layer_loads"] == (math.ceil(jobs / 2) + 1) * L < cost["cell_layer_loads"]
    for d in ("code", "prose"):
        got = np.array(streamed["raw"]["delta"]["reroute"][d]["per_window"], dtype=float)
        want = np.array(plain["raw"]["delta"]["reroute"][d]["per_window"], dtype=float)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
