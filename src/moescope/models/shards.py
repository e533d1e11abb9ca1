"""Which safetensors files hold a checkpoint: the shards its index names, else ``model*.safetensors``.

One rule for every reader of checkpoint files (the weight-geometry reader of
:mod:`moescope.analysis.checkpoint` and the layer streamer of :mod:`moescope.models.streaming`).
"""

from __future__ import annotations

import json
from pathlib import Path


def read_header(file: Path, *, error: type[ValueError] = ValueError) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset its data starts at; no tensor is read.

    The format: an 8-byte little-endian header length n, then n bytes of JSON (tensor name ->
    dtype, shape, data_offsets relative to byte 8 + n). Raises ``error`` naming the file when the
    length does not fit the file or the header is not JSON.
    """
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(100_000_000, file.stat().st_size - 8):
            raise error(f"corrupt safetensors file {file}: header length {n} does not fit the file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise error(f"corrupt safetensors file {file}: its header is not JSON ({err})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def weight_files(root: Path, *, error: type[ValueError] = ValueError) -> list[Path]:
    """The safetensors files of the checkpoint directory ``root``, in index (else name) order.

    Raises:
        ``error`` (a ValueError): an index that is not one, or that names missing shards (named).
        FileNotFoundError: no safetensors file at all (PyTorch ``.bin`` pickles are never read;
            the message says so when there are some).
    """
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise error(f"{index} is not a safetensors index (needs a 'weight_map'): {err}") from err
        files = [root / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise error(f"{index} names shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(root.glob("model*.safetensors")) or sorted(root.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in root.iterdir())[:12]
        hint = (" (PyTorch .bin weights are never read: they are pickles, which can run code; convert them to "
                "safetensors)" if any(n.endswith(".bin") for n in found) else "")
        raise FileNotFoundError(f"no *.safetensors weights in {root}; found: {', '.join(found) or 'nothing'}{hint}")
    return files
