"""load_moe_model(device_map=...): accelerate places the model, the routing is the plain load's.

On a CPU-only machine ``device_map="auto"`` keeps everything in CPU memory; with a ``max_memory`` below
the model's size and an ``offload_folder`` it writes the layers that do not fit to disk and accelerate's
hooks read them back for each forward. Either way the routing records (experts, weights, scores) of a
padded batch must equal those of the plain load. The placement arguments are checked before anything
is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_streaming import _records  # a padded batch's routing records

from moescope.models import load_moe_model
from moescope.models.loading import DEVICE_MAPS


def _same_routing(expected, got) -> None:
    assert [r.layer for r in got] == [r.layer for r in expected] and got
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a.indices, b.indices), f"layer {a.layer}: different experts chosen"
        torch.testing.assert_close(b.weights, a.weights, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("device_map", [*DEVICE_MAPS, {"": "cpu"}], ids=str)
def test_device_map_routes_like_the_plain_load(checkpoint, loaded, device_map):
    model, tokenizer, views = loaded("mixtral")
    expected = _records(model, views, tokenizer)
    placed, tok, pviews = load_moe_model(checkpoint("mixtral"), device_map=device_map)
    assert not placed.training and all(p.device.type == "cpu" for p in placed.parameters())
    _same_routing(expected, _records(placed, pviews, tok))


def _weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_disk_offload_routes_like_the_plain_load(checkpoint, loaded, tmp_path, family):
    """Half the weights' size of CPU memory: accelerate writes the rest to the offload folder and reads each
    offloaded layer back for its forward (its weights are meta tensors otherwise)."""
    path = checkpoint(family)
    model, tokenizer, views = loaded(family)
    expected = _records(model, views, tokenizer)
    offload = tmp_path / "offload"
    placed, tok, pviews = load_moe_model(path, device_map="auto", max_memory={"cpu": _weight_bytes(path) // 2},
                                         offload_folder=offload)
    assert "disk" in placed.hf_device_map.values(), placed.hf_device_map
    assert any(p.is_meta for p in placed.parameters())  # offloaded: on disk between forwards
    assert any(offload.iterdir())
    _same_routing(expected, _records(placed, pviews, tok))


def test_explicit_disk_placement(checkpoint, loaded, tmp_path):
    """A hand-written device_map: the decoder layers on disk, the rest in CPU memory."""
    model, tokenizer, views = loaded("mixtral")
    device_map = {"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    placed, tok, pviews = load_moe_model(checkpoint("mixtral"), device_map=device_map, offload_folder=tmp_path / "o")
    assert all(p.is_meta for p in placed.model.layers.parameters())
    assert not placed.lm_head.weight.is_meta
    _same_routing(_records(model, views, tokenizer), _records(placed, pviews, tok))


# -- checked before anything is read ---------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"device_map": "everywhere"}, r"device_map 'everywhere' is not a placement strategy; choose one of auto, "
                                   r"balanced, balanced_low_0, sequential, or a dict of module name -> device"),
    ({"device_map": ["cpu"]}, r"device_map must be one of auto, .* or a non-empty dict .*; got \['cpu'\]"),
    ({"device_map": {}}, r"device_map must be one of auto, .* or a non-empty dict"),
    ({"device_map": {"": "tpu"}}, r"device_map\[''\] is 'tpu'; a device is a GPU index, cuda:N, cpu, mps, disk"),
    ({"device_map": {"": 7}}, r"device_map\[''\] names GPU 7, but this machine has"),
    ({"device_map": {"": "cuda:x"}}, r"device_map\[''\] is 'cuda:x'; a GPU is an index or cuda:N"),
    ({"device_map": {"": "disk"}}, r"device_map puts modules on 'disk', which needs offload_folder"),
    ({"max_memory": {"cpu": "1GB"}}, r"max_memory and offload_folder only apply with a device_map; pass "
                                     r"device_map='auto'"),
    ({"offload_folder": "off"}, r"max_memory and offload_folder only apply with a device_map"),
    ({"device_map": "auto", "max_memory": {"gpu": "1GB"}}, r"max_memory key 'gpu' is not a device; use a GPU "
                                                           r"index, cuda:N, cpu, mps, disk"),
    ({"device_map": "auto", "max_memory": {"cpu": "lots"}}, r"memory size 'lots' is not a size"),
    ({"device_map": "auto", "max_memory": "1GB"}, r"max_memory must be a dict of device -> size"),
])
def test_bad_placement_is_refused_before_reading(tmp_path, kwargs, pattern):
    nowhere = tmp_path / "nope"  # not even a checkpoint: the placement is checked first
    with pytest.raises(ValueError, match=pattern):
        load_moe_model(nowhere, **kwargs)


def test_device_and_device_map_are_exclusive(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # check_device accepts cuda; nothing runs on it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda' and device_map='auto' both say where the model goes; "
                                         r"pass one"):
        load_moe_model(tmp_path / "nope", device="cuda", device_map="auto")


def test_offload_folder_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"offload_folder .*file is not a directory"):
        load_moe_model(tmp_path / "nope", device_map="auto", offload_folder=tmp_path / "file")


def test_max_memory_sizes_are_read_as_the_cli_reads_them():
    from moescope.models.loading import check_placement

    _, budget, folder = check_placement(torch.device("cpu"), "auto", {"cpu": "1GiB", "disk": 10**9}, "off")
    assert budget == {"cpu": 2**30, "disk": 10**9} and folder == Path("off")
