"""A bad checkpoint is refused in one line, naming the file and what is wrong, before any work.

Every bad case is made from a real tiny checkpoint written by ``save_pretrained`` and must be refused the
same way by both entry points, ``load_moe_model`` and ``stream_moe_model`` (both run
``loading._check_weights``), with a ValueError or FileNotFoundError whose message is one line, never a
transformers traceback. The check reads headers and builds a ``meta`` model only, so it must pass the
tiny checkpoint of every family.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import tiny_checkpoints

from moescope.models import load_moe_model
from moescope.models.loading import _check_weights
from moescope.models.shards import INDEX, read_header
from moescope.models.streaming import stream_moe_model

LOADERS = {"load": load_moe_model, "stream": stream_moe_model,
           "transformers": functools.partial(load_moe_model, loader="transformers")}


def _refused(loader: str, path: Path, pattern: str, error: type[Exception] = ValueError) -> str:
    """``LOADERS[loader](path)`` raises ``error`` matching ``pattern`` in one line; the message."""
    with pytest.raises(error, match=pattern) as err:
        LOADERS[loader](path)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def mixtral(checkpoint, tmp_path) -> Path:
    """A copy of the tiny Mixtral checkpoint to break."""
    return Path(shutil.copytree(checkpoint("mixtral"), tmp_path / "mixtral"))


def _write(file: Path, header: dict, data: bytes) -> None:
    """A safetensors file with this header (its JSON as given, unchecked) and these data bytes."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def _edit(file: Path):
    """(header, data bytes) of ``file``, its ``__metadata__`` kept."""
    n = int.from_bytes(file.read_bytes()[:8], "little")
    raw = file.read_bytes()
    return json.loads(raw[8:8 + n]), raw[8 + n:]


# -- the good ones pass -------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(tiny_checkpoints.BUILDERS))
def test_every_family_passes(checkpoint, family):
    """Headers, index and the dry run of transformers' loader on meta tensors agree for every family."""
    _check_weights(checkpoint(family))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The tiny Mixtral saved by save_pretrained in shards of at most 100 kB, with its index."""
    d = tmp_path_factory.mktemp("sharded") / "mixtral"
    tiny_checkpoints.build("mixtral", seed=1).save_pretrained(d, max_shard_size="100KB")
    tiny_checkpoints.save_tokenizer(d)
    assert len(list(d.glob("model-*.safetensors"))) >= 2 and (d / INDEX).is_file()
    return d


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_sharded_checkpoint_loads(sharded, loader):
    _, _, views = LOADERS[loader](sharded)
    assert len(views) == 2


# -- files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_truncated_shard_names_the_tensor_and_both_sizes(mixtral, loader):
    """An interrupted download: the header is whole, the last tensor's bytes are not all there."""
    file = mixtral / "model.safetensors"
    header, data_start = read_header(file)
    last = max(header, key=lambda k: header[k]["data_offsets"][1])
    size = file.stat().st_size
    file.write_bytes(file.read_bytes()[:-10])
    _refused(loader, mixtral, rf"^truncated safetensors file {file}: tensor '{last}' ends at byte "
                              rf"{data_start + header[last]['data_offsets'][1]} but the file has {size - 10} bytes")


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_shape_that_does_not_fit_its_bytes_is_corrupt(mixtral, loader):
    file = mixtral / "model.safetensors"
    header, data = _edit(file)
    key = "model.layers.0.block_sparse_moe.gate.weight"
    assert header[key]["shape"] == [tiny_checkpoints.E, tiny_checkpoints.H] and header[key]["dtype"] == "F32"
    header[key]["shape"] = [tiny_checkpoints.E, tiny_checkpoints.H + 1]
    _write(file, header, data)
    _refused(loader, mixtral, rf"^corrupt safetensors file {file}: tensor '{key}' spans 1024 bytes but its shape "
                              r"\(8, 33\) of F32 needs 1056")  # 8·32·4 bytes on disk, 8·33·4 claimed


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_overlapping_tensors_are_corrupt(mixtral, loader):
    """Two tensors of the same size, the second moved onto the first's bytes."""
    file = mixtral / "model.safetensors"
    header, data = _edit(file)
    first, second = "model.layers.0.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.gate.weight"
    header[second]["data_offsets"] = list(header[first]["data_offsets"])
    _write(file, header, data)
    _refused(loader, mixtral, rf"^corrupt safetensors file {file}: tensors '.*block_sparse_moe\.gate\.weight' "
                              r"\(bytes \d+-\d+\) and '.*block_sparse_moe\.gate\.weight' \(bytes \d+-\d+\) overlap")


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_unreadable_header_is_corrupt(mixtral, loader):
    file = mixtral / "model.safetensors"
    file.write_bytes(b"\x00garbage, not a safetensors header" * 10)
    _refused(loader, mixtral, rf"^corrupt safetensors file {file}: header length")


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_pickle_is_refused(mixtral, loader):
    (mixtral / "model.safetensors").rename(mixtral / "pytorch_model.bin")  # never unpickled: the name is enough
    _refused(loader, mixtral, r"pytorch_model\.bin is a PyTorch pickle, which moescope never loads")


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_index_naming_a_tensor_its_shard_lacks(sharded, tmp_path, loader):
    d = Path(shutil.copytree(sharded, tmp_path / "m"))
    index = json.loads((d / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    key = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][key] = shards[1]
    (d / INDEX).write_text(json.dumps(index))
    _refused(loader, d, rf"^{d / INDEX} maps '{key}' to {shards[1]}, which does not hold it \(it is in {shards[0]}\)")


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_index_naming_a_missing_shard(sharded, tmp_path, loader):
    d = Path(shutil.copytree(sharded, tmp_path / "m"))
    gone = sorted(d.glob("model-*.safetensors"))[-1]
    gone.unlink()
    _refused(loader, d, rf"names shards that are missing: {gone}$")


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_tensor_missing_from_the_checkpoint(mixtral, loader):
    """transformers would initialise it at random; the streamer would find out at that layer's forward."""
    from safetensors.torch import load_file, save_file

    weights = load_file(mixtral / "model.safetensors")
    del weights["model.layers.1.self_attn.q_proj.weight"]
    save_file(weights, mixtral / "model.safetensors", metadata={"format": "pt"})
    _refused(loader, mixtral, rf"^the checkpoint in {mixtral} lacks tensors its config\.json builds: "
                              r"model\.layers\.1\.self_attn\.q_proj\.weight$")


# -- config.json against the tensors --------------------------------------------------------------
# field of config.json -> (a wrong value, the message after the path: the first tensor named, its shape in the
# file and for the config, how many more disagree, and the field that fixes them all)
WRONG_CONFIG = {
    "hidden_size": (48, r"disagrees with the weights: lm_head\.weight is \[300, 32\] in model\.safetensors but "
                        r"\[300, 48\] for the config; 20 more tensors disagree too; config\.json's hidden_size=48, "
                        r"the weights fit hidden_size=32"),
    # the expert weights are fused on load: the message names the fused tensor and the checkpoint keys behind it
    "intermediate_size": (40, r"disagrees with the weights: model\.layers\.0\.mlp\.experts\.down_proj \(from "
                              r"model\.layers\.0\.block_sparse_moe\.experts\.0\.w2\.weight and 7 more\) is "
                              r"\[8, 32, 24\] in model\.safetensors but \[8, 32, 40\] for the config; .*the weights "
                              r"fit intermediate_size=24"),
    "num_local_experts": (4, r"disagrees with the weights: model\.layers\.0\.mlp\.experts\.down_proj .* is "
                             r"\[8, 32, 24\] in model\.safetensors but \[4, 32, 24\] for the config; .*the weights "
                             r"fit num_local_experts=8"),
    # k_proj is (kv heads · head_dim, H): 2 · 8 in the file, 4 · 8 for the config
    "num_key_value_heads": (4, r"disagrees with the weights: model\.layers\.0\.self_attn\.k_proj\.weight is "
                               r"\[16, 32\] in model\.safetensors but \[32, 32\] for the config; 3 more tensors "
                               r"disagree too; .*the weights fit num_key_value_heads=2"),
    "vocab_size": (200, r"disagrees with the weights: lm_head\.weight is \[300, 32\] in model\.safetensors but "
                        r"\[200, 32\] for the config; 1 more tensor disagrees too; config\.json's vocab_size=200, "
                        r"the weights fit vocab_size=300"),
    "num_hidden_layers": (3, r"lacks tensors its config\.json builds: model\.layers\.2\..*\(9 in all\); the weights "
                             r"hold none of model\.layers\.2: does config\.json's num_hidden_layers=3 match"),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("field", sorted(WRONG_CONFIG))
def test_config_that_disagrees_with_the_tensors(mixtral, loader, field):
    value, pattern = WRONG_CONFIG[field]
    config = json.loads((mixtral / "config.json").read_text())
    config[field] = value
    (mixtral / "config.json").write_text(json.dumps(config))
    _refused(loader, mixtral, rf"^(config\.json|the checkpoint) in {mixtral} {pattern}")


def test_shape_mismatch_the_dry_run_misses_is_still_named(mixtral, monkeypatch):
    """Were the dry run skipped (it refuses nothing when it cannot run), from_pretrained's own mismatches are
    named, key and both shapes, instead of transformers' pointer to a log it has silenced."""
    import moescope.models.loading as loading

    config = json.loads((mixtral / "config.json").read_text())
    config["vocab_size"] = 200
    (mixtral / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(loading, "check_shapes", lambda *args: None)
    _refused("load", mixtral, r"wrong shape .*lm_head\.weight")
    _refused("transformers", mixtral, r"lacks \(or has wrongly shaped\) weights the model needs: lm_head\.weight "
                              r"\(\[300, 32\] in the checkpoint, \[200, 32\] for the config\), "
                              r"model\.embed_tokens\.weight")
