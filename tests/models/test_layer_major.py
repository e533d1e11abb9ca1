"""Layer-major forwards (moescope.models.layer_major) record what batch-by-batch forwards record.

The common check runs on the tiny checkpoint of every family: three padded batches of different
texts through (a) the model batch by batch, (b) the same in-memory model layer-major and (c) the
layer-streamed model layer-major, which must read each decoder layer exactly once.
"""

from __future__ import annotations

import pytest
import tiny_checkpoints
import torch

from moescope.analysis.analyze import _forward
from moescope.models import RoutingRecorder
from moescope.models.families import BY_NAME
from moescope.models.layer_major import LayerMajor, StopForward
from moescope.models.streaming import stream_moe_model

TEXTS = [["The quick brown fox jumps over the lazy dog.", "x = 3"],
         ["def add(a, b): return a + b", "Tokyo is the capital of Japan."],
         ["12 + 30 = 42", "high dimensions are strange places"]]


def _batches(tokenizer):
    return [tokenizer(t, return_tensors="pt", padding=True) for t in TEXTS]


def _plain(model, views, batches):
    out = []
    with RoutingRecorder(model, views) as rec:
        for batch in batches:
            rec.set_batch(batch["input_ids"], batch["attention_mask"])
            _forward(model, batch["input_ids"], batch["attention_mask"])
            out.append({r.layer: r for r in rec.pop()})
    return out


def _layer_major(model, views, batches):
    out = [{} for _ in batches]
    runner = LayerMajor(model, views)
    with RoutingRecorder(model, views) as rec:
        def forward(b):
            rec.set_batch(batches[b]["input_ids"], batches[b]["attention_mask"])
            try:
                _forward(model, batches[b]["input_ids"], batches[b]["attention_mask"])
            finally:
                for r in rec.pop():
                    assert r.layer not in out[b], "a layer was recorded twice for one batch"
                    out[b][r.layer] = r
        runner.run(len(batches), forward)
    assert runner.hidden_bytes > 0
    return out


def _same(expected, got, family):
    assert len(expected) == len(got)
    for b, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert sorted(e) == sorted(g) and e, f"{family} batch {b}: layers {sorted(e)} vs {sorted(g)}"
        for layer, a in e.items():
            r = g[layer]
            assert torch.equal(a.indices, r.indices), f"{family} batch {b} layer {layer}: other experts chosen"
            torch.testing.assert_close(r.weights, a.weights, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r.scores, a.scores, rtol=1e-5, atol=1e-6)
            assert torch.equal(a.mask, r.mask) and a.batch_shape == r.batch_shape
            assert (a.token_ids is None) == (r.token_ids is None)


@pytest.mark.parametrize("family", sorted(tiny_checkpoints.BUILDERS))
def test_layer_major_equals_batch_by_batch(family, checkpoint, loaded):
    model, tokenizer, views = loaded(family)
    batches = _batches(tokenizer)
    if not all(BY_NAME[v.family].replayable for v in views):  # its loop carries more than the layers' outputs
        with pytest.raises(ValueError, match="cannot be replayed layer-major"):
            LayerMajor(model, views)
        return
    expected = _plain(model, views, batches)
    _same(expected, _layer_major(model, views, batches), family)
    streamed, _, sviews = stream_moe_model(checkpoint(family))
    _same(expected, _layer_major(streamed, sviews, batches), f"{family} (streamed)")
    streamer = streamed.moescope_streamer
    assert streamer.layer_loads == len(streamer.layers), "each decoder layer is read once in a layer-major run"
    assert all(p.is_meta for layer in streamer.layers for p in layer.parameters())
    # the model is whole again: a plain forward after the run records the same
    _same(expected[:1], _plain(streamed, sviews, batches[:1]), f"{family} (streamed, after)")


def test_a_forward_that_never_reaches_the_layer_is_an_error(loaded):
    model, _, views = loaded("mixtral")
    with pytest.raises(RuntimeError, match="did not reach decoder layer 0"):
        LayerMajor(model, views).run(1, lambda b: None)
    with pytest.raises(ValueError, match="at least one batch"):
        LayerMajor(model, views).run(0, lambda b: None)


def test_stop_forward_is_not_swallowed_outside_a_run(loaded):
    """A StopForward raised by a caller's own hook reaches the caller; the recorder keeps what ran."""
    model, tokenizer, views = loaded("mixtral")
    batch = _batches(tokenizer)[0]
    runner = LayerMajor(model, views)

    def stop(module, args, output):
        raise StopForward

    handle = runner.layers[0].register_forward_hook(stop)
    try:
        with RoutingRecorder(model, views) as rec, pytest.raises(StopForward):
            _forward(model, batch["input_ids"], batch["attention_mask"])
        assert [r.layer for r in rec.pop()] == [0]
    finally:
        handle.remove()
