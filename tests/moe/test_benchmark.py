"""The MoE benchmark's arithmetic and the shape of its rows (never its timings)."""

import json
import math

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from moescope.cli import app
from moescope.moe import benchmark
from moescope.moe.benchmark import (
    MoeShape,
    bench_moe,
    cpu_bf16_isa,
    machine_lines,
    moe_table,
    parse_dtypes,
    roofline,
)

TINY = (MoeShape("tiny", hidden=16, intermediate=8, num_experts=4, top_k=2),)


def test_roofline_hand_computed():
    # T=4, H=8, I=16, E=4, k=2, 3 experts hit. One expert holds 3·8·16 = 384 weights.
    # forward FLOPs: experts 2·4·2·384 = 6144, router 2·4·8·4 = 256 -> 6400
    # forward bytes: 3 experts · 384 weights · 4 bytes = 4608
    args = {"tokens": 4, "hidden": 8, "intermediate": 16, "num_experts": 4, "top_k": 2, "experts_hit": 3}
    r = roofline(**args, backward=False, gemm_flops=1e9, bandwidth=1e6)
    assert (r["flops"], r["bytes"]) == (6400, 4608)
    assert r["compute_s"] == pytest.approx(6.4e-6) and r["memory_s"] == pytest.approx(4.608e-3)
    assert r["roofline_s"] == pytest.approx(4.608e-3) and r["bound"] == "memory"
    # forward+backward: both tripled (two GEMMs per forward GEMM; weights read again, gradients written)
    r = roofline(**args, backward=True, gemm_flops=1e9, bandwidth=1e12)
    assert (r["flops"], r["bytes"]) == (19200, 13824)
    assert r["roofline_s"] == pytest.approx(1.92e-5) and r["bound"] == "compute"
    # bfloat16: 2 bytes per weight halves the bytes (4608 -> 2304); the FLOPs are the same
    r = roofline(**args, backward=False, gemm_flops=1e9, bandwidth=1e6, bytes_per_value=2)
    assert (r["flops"], r["bytes"]) == (6400, 2304) and r["memory_s"] == pytest.approx(2.304e-3)


def test_bench_rows_structure():
    result = bench_moe(quick=True, shapes=TINY, tokens=(3, 8))
    machine, rows = result["machine"], result["rows"]
    assert set(machine["gemm_flops"]) == {"float32", "bfloat16"} and min(machine["gemm_flops"].values()) > 0
    assert machine["bandwidth"] > 0 and machine["threads"] >= 1
    assert machine["bandwidth"] == max(machine["copy_bytes_per_s"], machine["read_bytes_per_s"])
    assert machine["isa"] in ("AMX", "AVX-512 BF16", "none")
    assert [(r["dtype"], r["tokens"], r["pass"]) for r in rows] == [
        (d, t, p) for d in ("float32", "bfloat16") for t in (3, 8) for p in ("forward", "forward+backward")]
    for r in rows:
        assert (r["shape"], r["hidden"], r["intermediate"], r["num_experts"], r["top_k"]) == ("tiny", 16, 8, 4, 2)
        assert 1 <= r["experts_hit"] <= min(4, r["tokens"] * 2)
        # the same weights give the same output; in bfloat16 up to rounding (other summation order)
        assert r["max_abs_diff"] < (1e-5 if r["dtype"] == "float32" else 1e-2)
        assert {"moescope", "moescope_sorted", "moescope_loop", "moescope_bmm", "hf_eager", "dense_gemms"} <= set(
            r["times_s"])
        assert r["auto_method"] in ("sorted", "bmm")
        assert set(r["times_s"]) | set(r["skipped"]) >= {"hf_grouped_mm"}
        for name, t in r["times_s"].items():
            assert t > 0 and r["best_s"][name] <= t and r["repeats"][name] >= 2
        expected = roofline(tokens=r["tokens"], hidden=16, intermediate=8, num_experts=4, top_k=2,
                            experts_hit=r["experts_hit"], backward=r["pass"] != "forward",
                            gemm_flops=machine["gemm_flops"][r["dtype"]], bandwidth=machine["bandwidth"],
                            bytes_per_value=2 if r["dtype"] == "bfloat16" else 4)
        assert {k: r[k] for k in expected} == expected
        hf = {n: r["times_s"][n] for n in ("hf_eager", "hf_grouped_mm") if n in r["times_s"]}
        assert r["hf_best"] == min(hf, key=hf.get)
        assert r["moescope_vs_hf_best"] == pytest.approx(r["times_s"]["moescope"] / min(hf.values()))
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in r if k.startswith("moescope_vs_") and r[k] is not None)
        assert r["moescope_vs_roofline"] == pytest.approx(r["times_s"]["moescope"] / r["roofline_s"])
        assert r["moescope_vs_hf_eager"] == pytest.approx(r["times_s"]["moescope"] / r["times_s"]["hf_eager"])
        assert r["moescope_vs_roofline_best"] == pytest.approx(r["best_s"]["moescope"] / r["roofline_s"])
        assert r["moescope_vs_dense_gemms"] == pytest.approx(r["times_s"]["moescope"] / r["times_s"]["dense_gemms"])
        assert r["dense_gemms_vs_roofline"] == pytest.approx(r["times_s"]["dense_gemms"] / r["roofline_s"])
    json.dumps(result, allow_nan=False)  # plain JSON
    for stat in ("median", "best"):
        console = Console(record=True, width=200)
        console.print(moe_table(result, stat=stat))
        text = console.export_text()
        assert f"{stat} ms" in text and "tiny" in text and "dense GEMMs" in text and "÷best HF" in text
        assert "fp32" in text and "bf16" in text and "dtype" in text
    lines = machine_lines(machine)
    assert any(line.startswith(f"bfloat16 ISA: {machine['isa']}") for line in lines)
    assert any("GFLOP/s float32" in line and "GFLOP/s bfloat16" in line for line in lines)
    with pytest.raises(ValueError, match="stat must be"):
        moe_table(result, stat="mean")


def test_dense_gemms_shapes():
    # counts (3, 0, 2) at T=4, H=16, I=4, E=3: the router (4, 16)·(16, 3), then per expert hit
    # (n, 16)·(16, 8) and (n, 4)·(4, 16): 1 + 2·2 = 5 GEMMs forward; backward adds an input-
    # and a weight-gradient GEMM for each, e.g. (4, 3)·(3, 16) and (16, 4)·(4, 3) for the router's.
    from unittest import mock

    shape = MoeShape("t", hidden=16, intermediate=4, num_experts=3, top_k=2)
    for backward, expected in ((False, [((4, 16), (16, 3)), ((3, 16), (16, 8)), ((3, 4), (4, 16)),
                                        ((2, 16), (16, 8)), ((2, 4), (4, 16))]), (True, None)):
        step = benchmark._dense_gemms(shape, [3, 0, 2], 4, backward)
        with mock.patch.object(torch, "mm", wraps=torch.mm) as spy:
            step()
        shapes = [(tuple(c.args[0].shape), tuple(c.args[1].shape)) for c in spy.call_args_list]
        if backward:
            assert len(shapes) == 15 and shapes[1:3] == [((4, 3), (3, 16)), ((16, 4), (4, 3))]
        else:
            assert shapes == expected
    with mock.patch.object(torch, "mm", wraps=torch.mm) as spy:
        benchmark._dense_gemms(shape, [3, 0, 2], 4, True, torch.bfloat16)()
    assert {a.dtype for c in spy.call_args_list for a in (*c.args, c.kwargs["out"])} == {torch.bfloat16}


def test_dtypes_parsed_and_bad_ones_named():
    assert parse_dtypes("float32,bfloat16") == ("float32", "bfloat16")
    assert parse_dtypes(" bfloat16 , bfloat16") == ("bfloat16",)
    assert parse_dtypes(["float32"]) == ("float32",)
    for bad, named in (("float32,float16", "'float16'"), ("", "''"), ("bf16", "'bf16'")):
        with pytest.raises(ValueError, match=f"one or more of float32, bfloat16.*got {named}"):
            parse_dtypes(bad)
    with pytest.raises(ValueError, match="'float64'"):
        bench_moe(quick=True, shapes=TINY, tokens=(2,), dtypes=("float64",))


def test_bf16_isa_from_cpu_flags():
    assert cpu_bf16_isa({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}) == "AMX"
    assert cpu_bf16_isa({"amx_bf16"} | {"avx512_bf16"}) == "AVX-512 BF16"   # no tiles: no AMX
    assert cpu_bf16_isa({"avx512f", "avx2"}) == "none"
    assert cpu_bf16_isa(set()) == "none"


def test_bench_rejects_bad_tokens():
    with pytest.raises(ValueError, match="tokens must be positive"):
        bench_moe(quick=True, shapes=TINY, tokens=(0,))


runner = CliRunner()


def test_cli_bench_moe_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "bench" in result.output
    result = runner.invoke(app, ["bench", "moe", "--help"])
    assert result.exit_code == 0
    assert "--quick" in result.output and "--out" in result.output


def test_cli_bench_moe_writes_json(tmp_path, monkeypatch):
    from moescope.moe import memory

    real = benchmark.bench_moe
    monkeypatch.setattr(benchmark, "bench_moe", lambda **kw: real(**kw, shapes=TINY, tokens=(5,)))
    calls = []   # not for real: the setting would outlive the test, for the whole test process
    monkeypatch.setattr(memory, "retain_freed_memory", lambda: calls.append(1) or True)
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "moe", "--quick", "--stat", "best", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 4 and data["machine"]["threads"] >= 1      # 2 dtypes x 2 passes
    assert {r["dtype"] for r in data["rows"]} == {"float32", "bfloat16"}
    assert "GFLOP/s" in result.output and "tiny" in result.output and "best ms" in result.output
    assert "bfloat16 ISA:" in result.output and "bf16" in result.output
    assert calls == [1] and "Memory: freed memory retained" in result.output
    result = runner.invoke(app, ["bench", "moe", "--quick", "--system-malloc"])
    assert result.exit_code == 0, result.output
    assert calls == [1] and "Memory: the system's malloc" in result.output
    result = runner.invoke(app, ["bench", "moe", "--stat", "mean"])
    assert result.exit_code != 0 and "--stat must be" in result.output
    result = runner.invoke(app, ["bench", "moe", "--quick", "--dtype", "bfloat16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {r["dtype"] for r in json.loads(out.read_text())["rows"]} == {"bfloat16"}


def test_cli_bench_moe_refuses_a_bad_dtype(monkeypatch):
    def work(**kwargs):
        raise AssertionError("bench_moe ran although --dtype was refused")

    monkeypatch.setattr(benchmark, "bench_moe", work)
    result = runner.invoke(app, ["bench", "moe", "--quick", "--dtype", "float32,float16"])
    text = " ".join(result.output.split())        # rich wraps the error box
    assert result.exit_code == 2 and "Traceback" not in text
    assert "--dtype must be one or more of float32, bfloat16" in text and "'float16'" in text


def test_last_level_cache_and_flush_size(monkeypatch, tmp_path):
    for index, text in enumerate(("48K", "2048K", "36608K", "bogus")):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(text + "\n")
    real_glob = benchmark.glob.glob
    monkeypatch.setattr(benchmark.glob, "glob", lambda pattern: real_glob(str(tmp_path / "index*" / "size")))
    assert benchmark._last_level_cache_bytes() == 36608 * 1024
    monkeypatch.setattr(benchmark.glob, "glob", lambda pattern: [])
    assert benchmark._last_level_cache_bytes() is None
    benchmark.cache_flush(1024)()          # runs; 2 KiB buffer
