"""Layer-streamed models (moescope.models.streaming): same routing as the in-memory model, bounded memory.

The common check runs on the tiny checkpoint of every family in the registry: the routing records
(indices, weights, scores) of a padded batch equal those of ``load_moe_model``. Families that
cannot be streamed are listed in :data:`REFUSED` with the reason their error must give; none
is skipped silently.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiny_checkpoints
import torch

from moescope.analysis.analyze import _forward
from moescope.models import RoutingRecorder, load_moe_model
from moescope.models.families import BY_MODEL_TYPE, BY_NAME, FAMILIES
from moescope.models.sizes import parse_size
from moescope.models.streaming import (
    MemoryPlan,
    StreamingError,
    decoder_layers,
    memory_plan,
    stream_moe_model,
)

#: families whose tiny checkpoint must be refused, -> a phrase of the error (none so far: every family streams)
REFUSED: dict[str, str] = {}
TEXTS = ["The quick brown fox jumps over the lazy dog.", "x = 3"]  # padded: the second row is mostly padding


def _family_of(name: str):
    return BY_NAME.get(name) or BY_MODEL_TYPE[name]


def test_every_loadable_family_has_a_streaming_check():
    covered = {_family_of(name).name for name in tiny_checkpoints.BUILDERS}
    loadable = {f.name for f in FAMILIES if f.model_types}
    assert loadable <= covered, f"families without a tiny checkpoint to stream: {sorted(loadable - covered)}"
    assert set(REFUSED) <= set(tiny_checkpoints.BUILDERS)


def _records(model, views, tokenizer):
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with RoutingRecorder(model, views) as rec:
        rec.set_batch(batch["input_ids"], batch["attention_mask"])
        _forward(model, batch["input_ids"], batch["attention_mask"])
        return rec.pop()


@pytest.mark.parametrize("family", sorted(tiny_checkpoints.BUILDERS))
def test_streamed_routing_equals_in_memory(family, checkpoint, loaded):
    path = checkpoint(family)
    if family in REFUSED:
        with pytest.raises(StreamingError, match=REFUSED[family]):
            stream_moe_model(path)
        return
    model, tokenizer, views = loaded(family)
    expected = _records(model, views, tokenizer)
    streamed, _, sviews = stream_moe_model(path)
    got = _records(streamed, sviews, tokenizer)
    assert [r.layer for r in got] == [r.layer for r in expected] and got
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a.indices, b.indices), f"{family} layer {a.layer}: different experts chosen"
        torch.testing.assert_close(b.weights, a.weights, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.mask, b.mask) and a.batch_shape == b.batch_shape
    # every layer was loaded once and is back on the meta device: no weight stays resident
    streamer = streamed.moescope_streamer
    assert streamer.layer_loads == len(streamer.layers)
    for layer in streamer.layers:
        assert all(p.is_meta for p in layer.parameters())


def test_streaming_in_bfloat16_matches_in_memory_bfloat16(checkpoint):
    from moescope.models import load_moe_model

    path = checkpoint("mixtral")
    model, tokenizer, views = load_moe_model(path, dtype=torch.bfloat16)
    streamed, _, sviews = stream_moe_model(path, dtype=torch.bfloat16)
    for a, b in zip(_records(model, views, tokenizer), _records(streamed, sviews, tokenizer), strict=True):
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(b.weights, a.weights)
    assert next(streamed.parameters()).dtype == torch.bfloat16


def test_decoder_layers_is_the_outermost_list(checkpoint):
    streamed, _, views = stream_moe_model(checkpoint("switch_transformers"))
    assert decoder_layers(streamed, views)[0] == "encoder.block"  # not encoder.block.N.layer


def test_a_moe_block_outside_a_layer_list_is_refused():
    from moescope.models import find_moe_layers
    from moescope.moe import Experts, MoELayer, TopKRouter

    layer = MoELayer(router=TopKRouter(8, 4, 2), experts=Experts(4, 8, 12))
    with pytest.raises(StreamingError, match="not inside a list of repeated layers"):
        decoder_layers(layer, find_moe_layers(layer))


@pytest.mark.parametrize("family", sorted(tiny_checkpoints.BUILDERS))
def test_the_pread_reader_builds_what_from_pretrained_builds(family, checkpoint, loaded):
    """load_moe_model's default reader (no memory map): every tensor, parameter or buffer, equal to
    from_pretrained's, bit for bit; and the same routing."""
    if family in REFUSED:
        return
    model, tokenizer, views = loaded(family)
    read, _, rviews = load_moe_model(checkpoint(family))
    expected, got = model.state_dict(), read.state_dict()
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), f"{family}: {key} differs"
    assert [(v.name, v.num_experts, v.top_k) for v in rviews] == [(v.name, v.num_experts, v.top_k) for v in views]
    for a, b in zip(views, rviews, strict=True):  # the views read the loaded tensors, not the meta skeleton's
        assert torch.equal(a.router_weight, b.router_weight)
        for e in (0, a.num_experts - 1):
            assert torch.equal(a.expert(e).down, b.expert(e).down) and torch.equal(a.expert(e).up, b.expert(e).up)
    for a, b in zip(_records(model, views, tokenizer), _records(read, rviews, tokenizer), strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)


def test_a_layer_missing_from_the_checkpoint_is_named(checkpoint, tmp_path, monkeypatch):
    """Refused up front (the config builds a tensor no file holds); and, should that check miss it, by the
    streamer itself when the layer's forward starts."""
    from safetensors.torch import load_file, save_file

    import moescope.models.streaming as streaming

    src = checkpoint("mixtral")
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = load_file(tmp_path / "model.safetensors")
    dropped = "model.layers.1.self_attn.q_proj.weight"
    del tensors[dropped]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks tensors its config\.json builds: model\.layers\.1\.self_attn\.q_proj"):
        stream_moe_model(tmp_path)
    monkeypatch.setattr(streaming, "_check_weights", lambda path: None)
    model, tokenizer, views = stream_moe_model(tmp_path)
    with pytest.raises(StreamingError, match=r"lacks weights of decoder layer 1: model\.layers\.1\.self_attn\.q_proj"):
        _records(model, views, tokenizer)


def test_non_safetensors_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="pytorch_model.bin is a PyTorch pickle, which moescope never loads"):
        stream_moe_model(tmp_path)


# --------------------------------------------------------------------------- sizes and budgets


@pytest.mark.parametrize(("text", "nbytes"), [
    ("4GB", 4 * 10**9), ("4gb", 4 * 10**9), ("512MiB", 512 * 2**20), ("8G", 8 * 2**30), ("1.5 GiB", 3 * 2**29),
    ("100", 100), (2048, 2048), ("64KB", 64_000), ("2T", 2 * 2**40),
])
def test_parse_size(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("bad", ["", "GB", "4 parsecs", "-1GB", "0", "1e9"])
def test_parse_size_rejects_non_sizes(bad):
    with pytest.raises(ValueError, match="memory size"):
        parse_size(bad)


def test_parse_size_rejects_other_types():
    with pytest.raises(TypeError, match="memory size"):
        parse_size(4.0)


PLAN = MemoryPlan(whole=4000 * 2**20, resident=100 * 2**20, largest_layer=900 * 2**20, conversion=300 * 2**20,
                  activations=36 * 2**20, num_layers=4, tokens=1024)


def test_plan_minimum_is_one_layer_plus_embeddings_plus_activations():
    # 100 + 900 + 300 + 36 MiB of tensors + 96 MiB of overhead = 1432 MiB
    assert PLAN.streamed == 1432 * 2**20
    assert PLAN.in_memory == (4000 + 36 + 96) * 2**20


def test_plan_decides_to_stream_only_when_the_model_does_not_fit():
    assert PLAN.decide(None) is False
    assert PLAN.decide("16GiB") is False
    assert PLAN.decide("2GiB") is True
    assert PLAN.decide("16GiB", stream=True) is True   # asked for, and the budget allows it
    assert PLAN.decide(None, stream=True) is True


def test_plan_refuses_a_budget_below_its_minimum_and_names_it():
    with pytest.raises(StreamingError, match=r"needs at least 1\.40 GiB.*at least 1432MiB"):
        PLAN.decide("1GiB")
    with pytest.raises(StreamingError, match="cannot hold the whole model"):
        PLAN.decide("2GiB", stream=False)


def test_memory_plan_of_a_tiny_checkpoint(checkpoint):
    plan = memory_plan(checkpoint("mixtral"), tokens=64)
    assert plan.num_layers == 2
    assert plan.whole == plan.resident + 2 * plan.largest_layer  # both tiny layers are alike
    assert 0 < plan.conversion < plan.largest_layer
    assert plan.decide(plan.streamed) is True


# --------------------------------------------------------------------------- memory

_CHILD = textwrap.dedent("""
    import json, re, sys, torch
    def status(key):
        text = open("/proc/self/status").read()
        return int(re.search(rf"^{key}:\\s+(\\d+) kB", text, re.M).group(1)) * 1024
    from moescope.models import RoutingRecorder, load_moe_model
    from moescope.models.streaming import memory_plan, stream_moe_model
    path, tokens = sys.argv[1], int(sys.argv[2])
    plan = memory_plan(path, tokens=tokens)
    base = status("VmRSS")
    model, _, views = stream_moe_model(path)
    ids = torch.randint(0, 1000, (1, tokens))
    with torch.no_grad(), RoutingRecorder(model, views) as rec:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
        layers = len(rec.pop())
    print(json.dumps({"growth": status("VmHWM") - base, "whole": plan.whole, "streamed": plan.streamed,
                      "one_layer": plan.resident + plan.largest_layer + plan.activations, "layers": layers}))
""")


def write_mixtral(root: Path, *, hidden: int = 1024, inter: int = 1024, experts: int = 8, layers: int = 4,
                  vocab: int = 8000, heads: int = 16, kv: int = 4) -> Path:
    """A Mixtral checkpoint with random bfloat16 weights in the on-disk layout (per-expert w1/w2/w3)."""
    from transformers import MixtralConfig

    from moescope.analysis.checkpoint import write_safetensors

    root.mkdir(parents=True, exist_ok=True)
    MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts, num_experts_per_tok=2,
                  num_hidden_layers=layers, vocab_size=vocab, num_attention_heads=heads, num_key_value_heads=kv,
                  tie_word_embeddings=False, dtype="bfloat16").save_pretrained(root)
    d = hidden // heads
    specs = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        a = f"{p}.self_attn"
        specs += [(f"{p}.input_layernorm.weight", (hidden,)), (f"{p}.post_attention_layernorm.weight", (hidden,)),
                  (f"{a}.q_proj.weight", (heads * d, hidden)), (f"{a}.k_proj.weight", (kv * d, hidden)),
                  (f"{a}.v_proj.weight", (kv * d, hidden)), (f"{a}.o_proj.weight", (hidden, heads * d)),
                  (f"{p}.block_sparse_moe.gate.weight", (experts, hidden))]
        for e in range(experts):
            q = f"{p}.block_sparse_moe.experts.{e}"
            specs += [(f"{q}.w1.weight", (inter, hidden)), (f"{q}.w3.weight", (inter, hidden)),
                      (f"{q}.w2.weight", (hidden, inter))]
    specs += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    shapes = dict(specs)
    g = torch.Generator().manual_seed(0)

    def make(name: str) -> torch.Tensor:
        t = torch.randn(shapes[name], generator=g)
        return (1.0 + 0.1 * t if name.endswith("norm.weight") else 0.02 * t).to(torch.bfloat16)

    write_safetensors(root / "model.safetensors", [(n, s, torch.bfloat16) for n, s in specs], make)
    return root


@pytest.mark.slow
def test_streamed_peak_memory_is_about_one_layer(tmp_path):
    path = write_mixtral(tmp_path / "mixtral")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), "128"], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["layers"] == 4
    # float32: whole model ~540 MB; one layer + embeddings + activations ~170 MB
    assert got["growth"] < 0.6 * got["whole"], got
    assert got["growth"] <= got["streamed"], got  # the plan's minimum is a safe budget
