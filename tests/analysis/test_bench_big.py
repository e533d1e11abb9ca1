"""The Mixtral-shaped benchmark checkpoint (``analysis.big_checkpoint``) and ``bench analyze --big`` on a tiny one."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from moescope.analysis import bench
from moescope.analysis.big_checkpoint import MARKER, bench_cache_dir, checkpoint_spec, make_mixtral_checkpoint
from moescope.cli import app

# Two layers, hidden 64: ~0.9 MB in ten shards of at most 100 kB, so that the index and sharding are exercised.
TINY = {"layers": 2, "hidden": 64, "intermediate": 128, "experts": 4, "vocab": 300, "heads": 4, "kv_heads": 2,
        "shard_bytes": 100_000}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_mixtral_checkpoint(tmp_path_factory.mktemp("big") / "tiny", **TINY)


@pytest.fixture(scope="module")
def result(tiny):
    """``bench_big`` on the tiny checkpoint with a budget below its streamed minimum (so it is raised)."""
    return bench.bench_big(tiny, max_memory="1MB", tokens=96, seq_len=32, batch_size=2, shape=TINY)


def test_transformers_loads_it_with_every_key(tiny):
    from transformers import MixtralForCausalLM

    model, info = MixtralForCausalLM.from_pretrained(tiny, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert model.dtype == torch.bfloat16
    assert model.config.num_local_experts == TINY["experts"] and model.config.num_hidden_layers == TINY["layers"]
    index = json.loads((tiny / "model.safetensors.index.json").read_text())
    shards = sorted(tiny.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == sum(2 * math.prod(s) for _, s in checkpoint_spec(model.config))


def test_weights_are_random_and_distinct(tiny):
    """N(0, 0.02²) pieces with random offsets and signs: the right scale, and no two experts alike."""
    index = json.loads((tiny / "model.safetensors.index.json").read_text())["weight_map"]

    def get(name):
        with safe_open(tiny / index[name], "pt") as f:
            return f.get_tensor(name).float()

    w = [get(f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight") for e in range(TINY["experts"])]
    for t in w:
        assert t.std().item() == pytest.approx(0.02, rel=0.1) and abs(t.mean().item()) < 2e-3
    for a in range(len(w)):
        for b in range(a + 1, len(w)):
            assert not torch.equal(w[a], w[b])
    assert torch.equal(get("model.norm.weight"), torch.ones(TINY["hidden"]))


def test_load_moe_model_routes_it(tiny):
    from moescope.models import load_moe_model

    model, tokenizer, views = load_moe_model(tiny, dtype="auto")
    assert tokenizer is not None and len(tokenizer) <= TINY["vocab"]
    assert len(views) == TINY["layers"] and views[0].num_experts == TINY["experts"]
    ids = torch.tensor([tokenizer("def add(a, b): return a + b")["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits.float()).all()


def test_cache_is_reused(tiny):
    before = {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()}
    assert make_mixtral_checkpoint(tiny, **TINY) == tiny
    assert {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()} == before


def test_half_written_cache_is_rebuilt(tmp_path):
    root = tmp_path / "half"
    root.mkdir()
    (root / "config.json").write_text("{")
    (root / "model-00001-of-00003.safetensors").write_bytes(b"\0" * 10)  # a crash mid-write: no marker
    make_mixtral_checkpoint(root, **TINY)
    assert json.loads((root / MARKER).read_text())["hidden"] == TINY["hidden"]
    assert not (root / "model-00001-of-00003.safetensors").exists()
    assert not list(tmp_path.glob(".half.tmp-*"))  # the temporary sibling was renamed into place


def test_another_shape_is_rebuilt_and_a_foreign_folder_refused(tmp_path):
    root = make_mixtral_checkpoint(tmp_path / "ck", **TINY)
    make_mixtral_checkpoint(root, **{**TINY, "layers": 1})
    assert json.loads((root / MARKER).read_text())["layers"] == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="notes.txt"):
        make_mixtral_checkpoint(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad", [{"vocab": 100}, {"hidden": 66}, {"experts": 1}, {"layers": 0}])
def test_bad_shape_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_mixtral_checkpoint(tmp_path / "x", **{**TINY, **bad})
    assert not (tmp_path / "x").exists()


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert bench_cache_dir() == tmp_path / "moescope" / "bench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert bench_cache_dir().parts[-3:] == (".cache", "moescope", "bench")


@pytest.mark.slow
def test_bench_big_measures_both_paths(result):
    assert result["checkpoint"]["made"] is False  # the fixture's checkpoint was reused
    assert result["plain_read"]["bytes"] == result["checkpoint"]["bytes"]
    assert result["plain_read"]["read_rate"] > 0
    for name in ("streamed", "in_memory"):
        run = result[name]
        assert "error" not in run, run.get("error")
        assert run["tokens"] == 96
        for key in ("tokens_per_s", "read_rate", "peak_rss_growth"):
            assert math.isfinite(run[key]) and run[key] > 0, (name, key, run[key])
        assert run["passes"] >= 1
        assert run["peak_anon_growth"] >= 0  # sampled every 20 ms
    streamed = result["streamed"]
    assert streamed["memory"]["streamed"] is True
    assert streamed["budget_raised"] and streamed["budget"] >= result["plan"]["streamed_minimum"]
    assert any("below the streamed minimum" in line for line in bench.big_lines(result))
    assert all(v is None or math.isfinite(v) for v in result["ratios"].values())
    json.dumps(result)  # JSON-ready


def test_cli_big_prints_the_table(monkeypatch, result, tmp_path):
    seen = {}

    def fake(**kw):
        seen.update(kw)
        return result

    monkeypatch.setattr(bench, "bench_big", fake)
    out = CliRunner().invoke(app, ["bench", "analyze", "--big", "--big-tokens", "96", "--max-memory", "5GiB",
                                   "--cache-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "tokens / s" in out.output and "read rate ÷ plain read" in out.output
    assert seen["tokens"] == 96 and seen["max_memory"] == "5GiB" and seen["cache_dir"] == tmp_path


def test_cli_big_refuses_a_bad_budget():
    out = CliRunner().invoke(app, ["bench", "analyze", "--big", "--max-memory", "lots"])
    assert out.exit_code == 2 and "lots" in out.output
