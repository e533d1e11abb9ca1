"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's data (a directory: its entries, after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def _plain(obj: object) -> object:
    """numpy scalars and arrays as plain Python values (``json`` knows neither)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON")


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """JSON with sorted keys and NaN/inf rejected (they are not JSON); floats keep full precision."""
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False, default=_plain)
    return write_text_atomic(path, text + "\n")
