"""Smoke test of ``moescope bench train`` (a benchmark: no time is asserted)."""

import json

import pytest
from typer.testing import CliRunner

from moescope.cli import app
from moescope.lab.bench_train import AUTOCAST, MOESCOPE, TrainBenchConfig, bench_train, mixtral_config, train_table
from moescope.lab.model import TinyLM


def test_mixtral_has_the_lab_lm_shape():
    lm = TrainBenchConfig().lm
    c = mixtral_config(lm)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_local_experts, c.num_experts_per_tok,
            c.intermediate_size, c.vocab_size) == (64, 2, 4, 8, 2, 128, 2048)
    assert c.tie_word_embeddings and c.output_router_logits


def test_bench_train_smoke():
    result = bench_train(TrainBenchConfig(rounds=1, steps_per_round=1, warmup_steps=0))
    rows = {r["name"]: r for r in result["rows"]}
    assert rows[MOESCOPE]["ratio"] == 1.0 and rows[MOESCOPE]["median_ms"] > 0
    assert rows[MOESCOPE]["params"] == sum(p.numel() for p in TinyLM(TrainBenchConfig().lm).parameters())
    assert rows[AUTOCAST]["skipped"] is None and rows[AUTOCAST]["params"] == rows[MOESCOPE]["params"]
    eager = rows["transformers Mixtral (eager)"]
    assert eager["skipped"] is None and eager["median_ms"] > 0 and eager["ratio"] > 0
    assert all((r["median_ms"] is None) == bool(r["skipped"]) for r in rows.values())
    train_table(result)  # renders


def test_bad_bench_config_is_refused():
    with pytest.raises(ValueError, match="rounds"):
        TrainBenchConfig(rounds=0)


def test_bench_train_cli_smoke(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "train", "--rounds", "1", "--steps-per-round", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "moescope / this" in res.output and MOESCOPE in res.output
    assert json.loads(out.read_text())["rows"][0]["name"] == MOESCOPE
