"""``moescope bench analyze``'s default section: tokens/s in float32 and bfloat16, with and without capture."""

import pytest
from typer.testing import CliRunner

from moescope.analysis.bench import bench_routing_capture
from moescope.cli import app


def test_both_dtypes_with_and_without_capture():
    cap = bench_routing_capture(tokens=256, seq_len=128, repeats=1)
    assert list(cap["dtypes"]) == ["float32", "bfloat16"] and cap["tokens_per_pass"] == 256
    for d in cap["dtypes"].values():
        assert d["tokens_per_s"] == pytest.approx(256 / d["forward_s"])
        assert d["tokens_per_s_recorded"] == pytest.approx(256 / d["forward_recorded_s"])
        assert d["overhead"] == pytest.approx(d["forward_recorded_s"] / d["forward_s"] - 1)
    assert cap["speedup"]["float32"] == {"plain": 1.0, "recorded": 1.0}
    bf16 = cap["dtypes"]["bfloat16"]
    assert cap["speedup"]["bfloat16"]["plain"] == pytest.approx(cap["forward_s"] / bf16["forward_s"])
    assert cap["forward_s"] == cap["dtypes"]["float32"]["forward_s"]       # the float32 figures, as before
    assert cap["bf16_isa"] in ("AMX", "AVX-512 BF16", "none")
    assert cap["stats_bytes_after_1x"] == cap["stats_bytes_after_4x"]       # sums only: flat in the text


def test_auto_is_no_benchmark_dtype():
    with pytest.raises(ValueError, match=r"float32, bfloat16 or float16 \(not auto\); got \('auto',\)"):
        bench_routing_capture(dtypes=("auto",))


def test_the_command_prints_both_dtypes(monkeypatch):
    fake = {"tokens_per_pass": 4096, "threads": 2, "bf16_isa": "AMX", "forward_s": 0.2, "forward_recorded_s": 0.22,
            "overhead": 0.1, "stats_bytes_after_1x": 10, "stats_bytes_after_4x": 10,
            "dtypes": {"float32": {"forward_s": 0.2, "forward_recorded_s": 0.22, "overhead": 0.1,
                                   "tokens_per_s": 20480.0, "tokens_per_s_recorded": 18618.0},
                       "bfloat16": {"forward_s": 0.05, "forward_recorded_s": 0.06, "overhead": 0.2,
                                    "tokens_per_s": 81920.0, "tokens_per_s_recorded": 68267.0}},
            "speedup": {"float32": {"plain": 1.0, "recorded": 1.0}, "bfloat16": {"plain": 4.0, "recorded": 3.67}}}
    monkeypatch.setattr("moescope.analysis.bench.bench_routing_capture", lambda: fake)
    result = CliRunner().invoke(app, ["bench", "analyze", "--no-geometry"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "routing capture, float32: forward 200.0 ms (20,480 tokens/s) -> 220.0 ms" in text
    assert "routing capture, bfloat16: forward 50.0 ms (81,920 tokens/s) -> 60.0 ms with recording + statistics " \
           "(68,267 tokens/s, +20.0%); 4.00× float32's speed" in text
    assert "bfloat16 instructions: AMX" in text
