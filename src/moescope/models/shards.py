"""Which safetensors files hold a checkpoint, and whether their headers can be trusted.

:func:`weight_files` is the one rule for every reader of checkpoint files (the weight-geometry
reader of :mod:`moescope.analysis.checkpoint`, the layer streamer of
:mod:`moescope.models.streaming`): the shards its index names, else ``model*.safetensors``.

:func:`checkpoint_tensors` reads every header of a checkpoint (never a tensor) and refuses, naming
the file and the tensor, what would otherwise fail deep inside a loader or, worse, load garbage:

* a **truncated** shard: a tensor's byte range ends past the end of the file (an interrupted
  download keeps its header, so the header alone looks fine);
* a **corrupt** header: a tensor's byte length is not ``prod(shape)`` elements of its dtype, or
  two tensors' byte ranges overlap;
* an **index** (``model.safetensors.index.json``) that maps a tensor to a shard which does not hold it.

The format (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header
length n, n bytes of JSON mapping each tensor name to its dtype, shape and ``data_offsets``
``[start, end)`` relative to byte 8 + n, then the data.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

#: safetensors dtype -> bits per element (the format's list; the float4/float6 ones are packed)
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6,
              "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "I64": 64, "U64": 64, "F64": 64, "C64": 64}
INDEX = "model.safetensors.index.json"


def read_header(file: Path, *, error: type[ValueError] = ValueError) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset its data starts at; no tensor is read.

    Raises ``error`` naming the file when the length does not fit the file or the header is not a
    JSON object.
    """
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(100_000_000, file.stat().st_size - 8):
            raise error(f"corrupt safetensors file {file}: header length {n} does not fit the file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise error(f"corrupt safetensors file {file}: its header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise error(f"corrupt safetensors file {file}: its header is a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    return header, 8 + n


def check_header(file: Path, header: dict, data_start: int, *, error: type[ValueError] = ValueError) -> None:
    """Every tensor of ``header`` (read from ``file``, data from byte ``data_start``) is well formed and inside
    the file: ``data_offsets`` ``[start, end)`` with ``end - start == prod(shape) · bits / 8``, no two ranges
    overlapping, and ``data_start + end <= file size`` (else the file is *truncated*). Headers only."""
    size = file.stat().st_size
    spans = []
    for key, meta in header.items():
        offsets, shape = (meta.get("data_offsets"), meta.get("shape")) if isinstance(meta, dict) else (None, None)
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]
                or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise error(f"corrupt safetensors file {file}: tensor {key!r} has no valid shape and data_offsets "
                        f"({meta!r})")
        start, end = offsets
        bits = DTYPE_BITS.get(meta.get("dtype"))
        if bits is None:
            raise error(f"corrupt safetensors file {file}: tensor {key!r} has dtype {meta.get('dtype')!r}; "
                        f"safetensors dtypes are {', '.join(DTYPE_BITS)}")
        if 8 * (end - start) != math.prod(shape) * bits:
            raise error(f"corrupt safetensors file {file}: tensor {key!r} spans {end - start} bytes but its shape "
                        f"{tuple(shape)} of {meta['dtype']} needs {math.prod(shape) * bits / 8:g}")
        spans.append((start, end, key))
    previous = None
    for start, end, key in sorted(spans):
        if previous is not None and start < previous[1]:
            raise error(f"corrupt safetensors file {file}: tensors {previous[2]!r} (bytes {previous[0]}-{previous[1]}) "
                        f"and {key!r} (bytes {start}-{end}) overlap")
        if data_start + end > size:
            raise error(f"truncated safetensors file {file}: tensor {key!r} ends at byte {data_start + end} but the "
                        f"file has {size} bytes (an interrupted download or copy? fetch the file again)")
        previous = (start, end, key)


def _weight_map(root: Path, error: type[ValueError]) -> dict[str, str] | None:
    """The index's tensor -> shard file name map, or None without an index."""
    index = root / INDEX
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError(f"weight_map is a {type(weight_map).__name__}, not a map of tensor -> shard file")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise error(f"{index} is not a safetensors index (needs a 'weight_map'): {err}") from err
    return weight_map


def weight_files(root: Path, *, error: type[ValueError] = ValueError) -> list[Path]:
    """The safetensors files of the checkpoint directory ``root``, in index (else name) order.

    Raises:
        ``error`` (a ValueError): an index that is not one, or that names missing shards (named).
        FileNotFoundError: no safetensors file at all (PyTorch ``.bin`` pickles are never read;
            the message says so when there are some).
    """
    weight_map = _weight_map(root, error)
    if weight_map is not None:
        files = [root / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise error(f"{root / INDEX} names shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(root.glob("model*.safetensors")) or sorted(root.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in root.iterdir())[:12]
        hint = (" (PyTorch .bin weights are never read: they are pickles, which can run code; convert them to "
                "safetensors)" if any(n.endswith(".bin") for n in found) else "")
        raise FileNotFoundError(f"no *.safetensors weights in {root}; found: {', '.join(found) or 'nothing'}{hint}")
    return files


def checkpoint_tensors(root: Path, *, error: type[ValueError] = ValueError) -> dict[str, tuple[Path, dict]]:
    """Every tensor of the checkpoint in ``root`` -> ``(file, header entry)``, each header checked
    (:func:`check_header`) and the index, if any, checked against the headers. No tensor is read.

    Raises:
        ``error`` (a ValueError): a truncated or corrupt shard, or an index naming a tensor its shard lacks
            (the message names the file and the tensor).
        FileNotFoundError: as :func:`weight_files`.
    """
    tensors: dict[str, tuple[Path, dict]] = {}
    held: dict[str, set[str]] = {}  # shard file name -> its tensors
    for file in weight_files(root, error=error):
        header, data_start = read_header(file, error=error)
        check_header(file, header, data_start, error=error)
        tensors.update((key, (file, meta)) for key, meta in header.items())
        held[file.name] = set(header)
    for key, name in (_weight_map(root, error) or {}).items():
        if key not in held.get(name, ()):
            elsewhere = [f for f, keys in held.items() if key in keys]
            raise error(f"{root / INDEX} maps {key!r} to {name}, which does not hold it"
                        + (f" (it is in {elsewhere[0]})" if elsewhere else "")
                        + "; the index and the shards come from different checkpoints or an interrupted save")
    return tensors


# --------------------------------------------------------------------------- config vs. tensors

# safetensors dtype -> the dtype of the meta tensor standing in for it in the dry run (shapes are what is checked)
_META_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                "F8_E8M0": torch.float8_e8m0fnu}
#: candidate config fields tried (by how directly each explains the first wrong shape) before giving up on a hint
_HINT_TRIES = 8


def _dry_load(model: torch.nn.Module, tensors: dict[str, tuple[Path, dict]]):
    """transformers' loader run on ``meta`` stand-ins of the checkpoint's tensors: its ``LoadStateDictInfo``
    (mismatched and missing keys after the renamings, fusions, tying and ignore rules of ``from_pretrained``)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig
    from transformers.utils import logging as hf_logging

    state = {key: torch.empty(meta["shape"], dtype=_META_DTYPES.get(meta["dtype"], torch.uint8), device="meta")
             for key, (_, meta) in tensors.items()}
    config = LoadStateDictConfig(dtype=torch.float32, dtype_plan=model._get_dtype_plan(torch.float32),
                                 device_map={"": "meta"},
                                 weight_mapping=get_model_conversion_mapping(model, None, None))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        info, _ = convert_and_load_state_dict_in_model(model, state, config)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.mark_tied_weights_as_initialized(info)
    model.tie_weights(missing_keys=info.missing_keys, recompute_mapping=False)
    model._adjust_missing_and_unexpected_keys(info)
    return info


def _sources(model: torch.nn.Module, tensors: dict, target: str) -> list[str]:
    """The checkpoint keys transformers loads into model tensor ``target`` (several when it fuses them)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = copy.deepcopy(get_model_conversion_mapping(model, None, None) or [])  # renamings may keep state
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta = model.state_dict()
    found = []
    for key in tensors:  # as convert_and_load_state_dict_in_model renames them
        renamed, _ = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if renamed not in meta and key in meta:
            renamed, _ = rename_source_key(key, [], [], model.base_model_prefix, meta)
        if renamed == target:
            found.append(key)
    return sorted(found)


def _config_fields(config) -> list[tuple[str, int]]:
    """``(dotted name, value)`` of the integer fields of ``config`` and its sub-configs (``text_config.x``)."""
    fields, d = [], config.to_dict()
    for name, value in d.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            fields.append((name, value))
        elif isinstance(value, dict):
            fields += [(f"{name}.{k}", v) for k, v in value.items()
                       if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return fields


def _with_field(config, dotted: str, value: int):
    """A copy of ``config`` with one (possibly nested) field set, built anew so that derived sizes follow."""
    d = config.to_dict()
    *outer, name = dotted.split(".")
    (d[outer[0]] if outer else d)[name] = value
    return type(config).from_dict(d)


def _field_hint(config, build: Callable, mismatched: list[tuple[str, tuple, tuple]]) -> str:
    """``"; config.json's F=c, the weights fit F=w"`` when setting one integer field F to w gives every mismatched
    tensor its checkpoint shape (tried on meta models, fields whose value divides the first differing size
    first), else ``""``."""
    _, got, want = mismatched[0]
    if len(got) != len(want):
        return ""
    c, f = next((w, g) for g, w in zip(got, want, strict=True) if g != w)
    tries = sorted((c // x, dotted, f // (c // x)) for dotted, x in _config_fields(config)
                   if c % x == 0 and f % (c // x) == 0 and f // (c // x) > 0)
    for _, dotted, value in tries[:_HINT_TRIES]:
        try:
            shapes = build(_with_field(config, dotted, value)).state_dict()
        except Exception:  # a value the config class refuses is no hint
            continue
        if all(k in shapes and tuple(shapes[k].shape) == g for k, g, _ in mismatched):
            current = dict(_config_fields(config))[dotted]
            return f"; config.json's {dotted}={current}, the weights fit {dotted}={value}"
    return ""


def _layer_hint(config, missing: list[str], present: set[str]) -> str:
    """``"; …num_hidden_layers…"`` when every missing key lies in a numbered block the checkpoint has none of."""
    blocks = {m.group(1) for k in missing if (m := re.match(r"^(.*?\.\d+)\.", k))}
    if not blocks or any(not re.match(r"^.*?\.\d+\.", k) for k in missing) or any(
            k.startswith(tuple(b + "." for b in blocks)) for k in present):
        return ""
    layers = dict(_config_fields(config)).get("num_hidden_layers") or dict(_config_fields(config)).get(
        "text_config.num_hidden_layers")
    return (f"; the weights hold none of {', '.join(sorted(blocks)[:3])}"
            + (f": does config.json's num_hidden_layers={layers} match the checkpoint?" if layers else ""))


def check_shapes(root: Path, config, build: Callable, tensors: dict[str, tuple[Path, dict]]) -> None:
    """The model ``build(config)`` makes (on the ``meta`` device) holds exactly the checkpoint's tensors, in their
    shapes, once transformers has renamed and fused them; headers only.

    transformers' own loader is run dry (:func:`_dry_load`), so a key is compared with the model tensor
    ``from_pretrained`` would load it into, fusions included (Mixtral's eight ``experts.{e}.w1`` and ``w3`` are
    one ``gate_up_proj`` of shape ``(E, 2I, H)``). A dry run that cannot run (a converter that needs the values,
    such as a quantised checkpoint's) proves nothing and refuses nothing: the real load reports its own error.

    Args:
        root: the checkpoint directory (for the message).
        config: its transformers config.
        build: config -> the model class ``from_pretrained`` builds, on the ``meta`` device.
        tensors: :func:`checkpoint_tensors` of ``root``.

    Raises:
        ValueError: a tensor whose shape the config disagrees with (the first is named with both shapes, its
            checkpoint keys and file, and the config field that would fix every mismatch, when one does), or
            model tensors that no weight file holds (``num_hidden_layers`` beyond the checkpoint's layers).
    """
    try:
        model = build(config)
        info = _dry_load(model, tensors)
    except Exception:  # a dry run that cannot run proves nothing; the real load reports its own error
        return
    mismatched = sorted((k, tuple(got), tuple(want)) for k, got, want in info.mismatched_keys)
    if mismatched:
        name, got, want = mismatched[0]
        sources = _sources(model, tensors, name)
        file = tensors[sources[0]][0].name if sources else "the weights"
        origin = (f" (from {sources[0]}" + (f" and {len(sources) - 1} more" if len(sources) > 1 else "") + ")"
                  if sources and sources != [name] else "")
        more = {1: "", 2: "; 1 more tensor disagrees too"}.get(len(mismatched),
                                                                 f"; {len(mismatched) - 1} more tensors disagree too")
        raise ValueError(f"config.json in {root} disagrees with the weights: {name}{origin} is {list(got)} in {file} "
                         f"but {list(want)} for the config{more}{_field_hint(config, build, mismatched)}")
    if info.missing_keys:
        missing = sorted(info.missing_keys)
        shown = ", ".join(missing[:4]) + (f", ... ({len(missing)} in all)" if len(missing) > 4 else "")
        present = set(model.state_dict()) - info.missing_keys
        raise ValueError(f"the checkpoint in {root} lacks tensors its config.json builds: {shown}"
                         f"{_layer_hint(config, missing, present)}")
