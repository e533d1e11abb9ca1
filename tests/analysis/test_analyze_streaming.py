"""``analyze`` with layer streaming (``stream_layers`` / ``max_memory``) equals the in-memory analysis."""

import json
from pathlib import Path

import pytest
import torch

from moescope.analysis.analyze import AnalyzeConfig, Source, analyze
from moescope.models.streaming import StreamingError, memory_plan

TEXT = "def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. 12 + 30 = 42.\n" * 8
FAMILIES = ("mixtral", "deepseek_v3", "switch_transformers")  # fused experts, grouped sigmoid routing, encoder


def _config(path: Path, **kw) -> AnalyzeConfig:
    return AnalyzeConfig(path=path, sources=(Source("a", TEXT, "code"), Source("b", TEXT[::-1], "prose")),
                         seq_len=16, batch_size=3, weights=False, **kw)


def _close(a, b) -> None:
    """Equal JSON trees, floats to 1e-5 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7)
    else:
        assert a == b


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_analysis_equals_in_memory(family, saved):
    plain = analyze(_config(saved(family)))
    streamed = analyze(_config(saved(family), stream_layers=True))
    assert "memory" not in plain  # the default results do not change
    if family != "switch_transformers":  # measured on the resident router weights only (not when streamed)
        assert plain.pop("router_boundary") and "router_boundary" not in streamed
        assert plain.pop("router_flips") and "router_flips" not in streamed
    assert plain.pop("expert_activity") and "expert_activity" not in streamed  # runs experts on resident weights
    if family != "switch_transformers":  # a next-token loss of decoder-only models, on resident weights
        assert plain.pop("ablation") and "ablation" not in streamed
    memory = streamed.pop("memory")
    assert memory["streamed"] is True and memory["bytes_read"] > 0
    layers = memory_plan(saved(family)).num_layers
    assert memory["chunks"] == 1 and memory["layer_reads"] == layers, "layer-major: each layer read once"
    assert 0 < memory["hidden_buffer"]
    json.dumps(memory, allow_nan=False)
    _close(plain, streamed)


def test_a_tight_budget_splits_the_windows_into_chunks_with_the_same_results(saved):
    """The kept residual stream is bounded by the budget: more chunks, each layer read once per chunk."""
    path = saved("mixtral")
    plan = memory_plan(path, tokens=16 * 3)
    budget = plan.streamed + plan.per_token * 16 * 3  # room for two forwards' residual stream
    assert plan.buffer_tokens(budget) == 16 * 3 * 2
    plain = analyze(_config(path, stream_layers=True))
    tight = analyze(_config(path, stream_layers=True, max_memory=budget))
    memory = tight.pop("memory")
    assert memory["chunks"] > 1 and memory["layer_reads"] == memory["chunks"] * plan.num_layers
    assert memory["hidden_buffer"] <= plan.per_token * plan.buffer_tokens(budget)
    plain.pop("memory")
    _close(plain, tight)


def test_a_budget_decides_to_stream_or_refuses(saved):
    path = saved("mixtral")
    plan = memory_plan(path, tokens=16 * 3)
    assert analyze(_config(path, max_memory=plan.in_memory + 1))["memory"]["streamed"] is False
    assert analyze(_config(path, max_memory=plan.streamed))["memory"]["streamed"] is True
    with pytest.raises(StreamingError, match=f"at least {-(-plan.streamed // 2**20)}MiB"):
        analyze(_config(path, max_memory=plan.streamed - 1))


def test_a_bad_budget_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="memory size"):
        _config(tmp_path, max_memory="lots")


def test_a_model_that_carries_state_between_layers_is_streamed_batch_by_batch(tmp_path):
    """Inkling-2's loop feeds block-boundary states to later layers, which a layer-major replay of the layers'
    outputs would lose (with 4 decoder layers, layers 2 and 3 then choose other experts): streamed, it runs
    batch by batch, reads every layer once per batch, and routes as the in-memory model does."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    import tiny_checkpoints

    model = tiny_checkpoints.BUILDERS["inkling2_text"]()
    types = list(model.config.layer_types)
    model.config.num_hidden_layers, model.config.layer_types = 4, [types[i % len(types)] for i in range(4)]
    model = type(model)(model.config)
    generator = torch.Generator().manual_seed(0)
    tiny_checkpoints._randomize(model, generator)
    tiny_checkpoints.MODULES["inkling2_text"].randomize(model, generator)
    path = tmp_path / "inkling2"
    model.float().save_pretrained(path)
    tiny_checkpoints.save_tokenizer(path)
    plain = analyze(_config(path, ablation_windows=0))
    streamed = analyze(_config(path, stream_layers=True, ablation_windows=0))
    memory = streamed.pop("memory")
    assert memory["order"].startswith("batch by batch") and memory["layer_reads"] == 4 * memory["chunks"] > 4
    for key in ("router_boundary", "router_flips", "expert_activity"):
        plain.pop(key, None)
    _close(plain, streamed)
