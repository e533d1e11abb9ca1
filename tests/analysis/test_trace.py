"""``analyze --trace``: every routed token's choices in a Parquet file (moescope.analysis.trace)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats
import torch
from test_analyze_streaming import TEXT

from moescope.analysis.analyze import AnalyzeConfig, Source, analyze
from moescope.analysis.routing import NEAR_TIE
from moescope.analysis.trace import TraceWriter, layer_columns
from moescope.models import RoutingRecorder, load_moe_model
from moescope.models.view import RoutingRecord

SOURCES = (Source("code", TEXT, "code"), Source("prose", TEXT[::-1][:300], "prose"))


def _config(path, trace, **kw):
    return AnalyzeConfig(path=path, sources=SOURCES, seq_len=16, batch_size=3, weights=False, boundary_points=0,
                         trace=trace, **kw)


def test_the_trace_holds_every_real_token_with_the_experts_the_model_chose(saved, tmp_path):
    path = saved("qwen2_moe")
    results = analyze(_config(path, tmp_path / "t.parquet"))
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.num_rows == results["text"]["tokens"]
    model, tokenizer, views = load_moe_model(path)
    for source in SOURCES:
        rows = table.filter(pa.compute.equal(table["document"], source.label)).to_pydict()
        ids = tokenizer(source.text, add_special_tokens=False)["input_ids"]
        assert rows["position"] == list(range(len(ids))) and rows["token_id"] == ids
        assert rows["token"][:5] == [tokenizer.decode([t]) for t in ids[:5]]
        # the recorder's choices on the same text, one window at a time: the oracle
        with RoutingRecorder(model, views) as rec:
            for start in range(0, len(ids), 16):
                window = torch.tensor([ids[start:start + 16]])
                rec.set_batch(window, torch.ones_like(window))
                with torch.no_grad():
                    model(input_ids=window)
                for r in rec.pop():
                    experts, weights, entropy, margin = layer_columns(r.layer)
                    got = rows[experts][start:start + window.shape[1]]
                    assert got == r.indices.tolist(), f"layer {r.layer}, window at {start}"
                    span = slice(start, start + window.shape[1])
                    np.testing.assert_allclose(rows[weights][span], r.weights.numpy(), rtol=1e-5, atol=1e-6)
                    scores = r.scores.double().numpy()  # scipy's entropy normalises, as the trace does
                    np.testing.assert_allclose(rows[entropy][span], scipy.stats.entropy(scores, axis=1), rtol=1e-5)
                    ranked = -np.sort(-scores, axis=1)
                    kth, nxt = ranked[:, views[0].top_k - 1], ranked[:, views[0].top_k]
                    np.testing.assert_allclose(rows[margin][span], (kth - nxt) / np.abs(kth), rtol=1e-4, atol=1e-7)
    margins = np.array(table[layer_columns(0)[3]].to_numpy(zero_copy_only=False), dtype=float)
    assert np.all(margins >= 0) and results["routing"][0]["near_tie_share"] == pytest.approx(
        float(np.mean(margins < NEAR_TIE)))


def test_a_streamed_layer_major_trace_equals_the_in_memory_one(saved, tmp_path):
    path = saved("mixtral")
    analyze(_config(path, tmp_path / "a.parquet"))
    analyze(_config(path, tmp_path / "b.parquet", stream_layers=True))
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        if name.endswith((".weights", ".entropy", ".margin")):
            x = np.array(a[name].to_pylist(), dtype=float)
            np.testing.assert_allclose(np.array(b[name].to_pylist(), dtype=float), x, rtol=1e-5, atol=1e-6)
        else:
            assert a[name].to_pylist() == b[name].to_pylist(), name


def test_memory_stays_flat_as_tokens_grow(tmp_path, monkeypatch):
    """pyarrow's allocations while writing 10k and then 100k tokens: bounded by one row group (here 4096 rows,
    so that both runs pass it), not by the tokens."""
    import moescope.analysis.trace as trace_module

    monkeypatch.setattr(trace_module, "ROW_GROUP", 4096)
    e, k, b, s = 8, 2, 4, 256
    gen = torch.Generator().manual_seed(0)

    def record(layer):
        scores = torch.rand(b * s, e, generator=gen)
        weights, indices = scores.topk(k, dim=-1)
        return RoutingRecord(layer=layer, indices=indices, weights=weights, scores=scores, batch_shape=(b, s),
                             mask=torch.ones(b * s, dtype=torch.bool), token_ids=None)

    peaks = []
    with TraceWriter(tmp_path / "big.parquet", [0, 1], str, top_k=[k, k]) as trace:
        for total in (10_000, 100_000):
            peak, batch = 0, 0
            while trace.rows < total:
                ids = torch.randint(0, 1000, (b, s), generator=gen)
                trace.add(batch, "doc", ids, torch.ones(b, s), torch.arange(b) * s, [record(0), record(1)])
                peak = max(peak, pa.total_allocated_bytes())
                batch += 1
            peaks.append(peak)
    meta = pq.read_metadata(tmp_path / "big.parquet")
    assert meta.num_rows == trace.rows >= 100_000
    assert meta.num_row_groups == -(-trace.rows // 4096)              # gathered into groups of 4096 rows
    assert peaks[1] <= 1.5 * peaks[0] + 2**20, f"allocations grew with the tokens: {peaks}"


@pytest.mark.parametrize(("trace", "message"), [("t.csv", "ending in .parquet|give a .parquet"),
                                                ("missing/t.parquet", "existing folder|does not exist")])
def test_bad_trace_paths_fail_before_any_work(saved, tmp_path, trace, message):
    with pytest.raises(ValueError, match=message):
        _config(saved("mixtral"), tmp_path / trace)


def test_bench_trace_reports_every_size():
    """The bench's --trace section: one row per size, the whole text traced (times reported, never asserted)."""
    from moescope.analysis.bench import bench_trace

    rows = bench_trace(sizes=(512, 1024), seq_len=128, batch=2)
    assert [r["tokens"] for r in rows] == [512, 1024] == [r["pathway_tokens"] for r in rows]
    assert all(r["trace_bytes"] > 0 and r["plain_s"] > 0 and r["tokens_per_s"] > 0 for r in rows)
