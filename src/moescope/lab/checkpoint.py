"""Crash-safe training checkpoints and the metrics log.

A checkpoint is a directory ``step_NNNNNN/`` (N optimiser steps done) holding

* ``model.safetensors`` — the model's state dict (weights and buffers such as DeepSeek-V3's
  selection bias), the run config in its metadata;
* ``optimizer.pt`` — the optimiser's state dict (``torch.save``, loaded with ``weights_only``);
* ``state.json`` — step, elapsed time, RNG states (torch, Python, the batch sampler), the
  run config, the corpus fingerprint, and the sha256 of the two files above.

Atomicity: all three files are written (each fsynced) into a temporary sibling directory
``.step_NNNNNN.XXXX.tmp``, the directory is fsynced and then renamed to ``step_NNNNNN`` in one
``rename`` — so a ``step_*`` directory is complete or absent, whatever moment a crash (even
``kill -9``) strikes. :func:`latest_checkpoint` still verifies the hashes before trusting one,
and :func:`clean_partial` removes the temporary and trash directories a crash can leave.

The metrics log is JSON Lines; each record is one ``write`` of one line to a file opened with
``O_APPEND``, fsynced before every checkpoint commit. After a crash the log may run past the
last checkpoint (or, in principle, end in a torn line): :func:`truncate_log` keeps exactly the
records up to the checkpoint's step, so a resumed run appends the same lines an uninterrupted
run would have written.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from moescope._files import fsync_path, write_bytes_atomic, write_json_atomic, write_text_atomic

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.pt", "state.json"
_STEP_DIR = re.compile(r"step_(\d{6,})")


def step_dir(checkpoints: Path, step: int) -> Path:
    return Path(checkpoints) / f"step_{step:06d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- RNG states as JSON --------------------------------------------------------------------------
def tensor_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def b64_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state(sampler: torch.Generator) -> dict:
    """The torch, Python and batch-sampler RNG states, JSON-ready."""
    version, internal, gauss = random.getstate()
    return {"torch": tensor_b64(torch.get_rng_state()), "sampler": tensor_b64(sampler.get_state()),
            "python": [version, list(internal), gauss]}


def set_rng_state(state: dict, sampler: torch.Generator) -> None:
    torch.set_rng_state(b64_tensor(state["torch"]))
    sampler.set_state(b64_tensor(state["sampler"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# -- checkpoints ---------------------------------------------------------------------------------
def save_checkpoint(checkpoints: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict) -> Path:
    """Write checkpoint ``step`` atomically (see the module docstring); returns its directory.

    ``state`` is the JSON part (RNG states, config, ...); ``step`` and the file hashes are added.
    """
    checkpoints = Path(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = step_dir(checkpoints, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=checkpoints))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the directory the usual mode
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        weights = save_safetensors(tensors, metadata={"step": str(step),
                                                      "config": json.dumps(state.get("config"), sort_keys=True)})
        buf = io.BytesIO()
        torch.save(optimizer.state_dict(), buf)
        opt_bytes = buf.getvalue()
        write_bytes_atomic(tmp / MODEL_FILE, weights)
        write_bytes_atomic(tmp / OPTIMIZER_FILE, opt_bytes)
        meta = {**state, "step": step, "files": {MODEL_FILE: _sha256(weights), OPTIMIZER_FILE: _sha256(opt_bytes)}}
        write_json_atomic(tmp / STATE_FILE, meta)
        fsync_path(tmp)
        if final.exists():  # only when a run re-saves a step it already had: replace it whole
            _discard(final)
        os.replace(tmp, final)  # the commit: one rename of a complete directory
        fsync_path(checkpoints)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _discard(path: Path) -> None:
    """Remove a checkpoint directory: rename it out of the ``step_*`` namespace first, then delete."""
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{path.name}.", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def clean_partial(checkpoints: str | os.PathLike) -> list[Path]:
    """Delete the temporary and trash directories an interrupted run left; returns what went."""
    checkpoints = Path(checkpoints)
    gone = []
    if checkpoints.is_dir():
        for p in sorted(checkpoints.iterdir()):
            if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".trash-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def list_checkpoints(checkpoints: str | os.PathLike) -> dict[int, Path]:
    """Committed checkpoint directories by step (not verified; see :func:`verify_checkpoint`)."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return {}
    out = {}
    for p in checkpoints.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def verify_checkpoint(path: str | os.PathLike) -> dict | None:
    """The checkpoint's state.json if its files exist and match their recorded hashes, else None."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        for name, digest in state["files"].items():
            if _sha256((path / name).read_bytes()) != digest:
                return None
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(checkpoints: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, with its state; None if there is none."""
    for _, path in sorted(list_checkpoints(checkpoints).items(), reverse=True):
        state = verify_checkpoint(path)
        if state is not None:
            return path, state
    return None


def prune(checkpoints: str | os.PathLike, keep: set[int], newest: int) -> None:
    """Delete committed checkpoints older than ``newest`` whose step is not in ``keep``."""
    for step, path in list_checkpoints(checkpoints).items():
        if step < newest and step not in keep:
            _discard(path)


def load_weights(path: str | os.PathLike, model: nn.Module) -> None:
    """Load ``model.safetensors`` of a checkpoint directory into ``model`` (strict)."""
    tensors = load_safetensors((Path(path) / MODEL_FILE).read_bytes())
    model.load_state_dict(tensors, strict=True)


def load_optimizer(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    state = torch.load(io.BytesIO((Path(path) / OPTIMIZER_FILE).read_bytes()), weights_only=True)
    optimizer.load_state_dict(state)


# -- the metrics log -----------------------------------------------------------------------------
def _finite(obj):
    """NaN/inf (not JSON) as None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class MetricsLog:
    """Append-only JSON Lines file: one ``os.write`` per record, fsync on demand."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict) -> None:
        line = json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n"
        data = line.encode("utf-8")
        if os.write(self._fd, data) != len(data):  # a regular file takes a small write whole
            raise OSError(f"short write to {self.path}")

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_log(path: str | os.PathLike) -> list[dict]:
    """The complete records of a metrics log (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # only the last line can be torn; nothing after it is trusted
    return out


def truncate_log(path: str | os.PathLike, step: int) -> list[dict]:
    """Keep the records with ``record["step"] <= step`` (rewritten atomically); returns them."""
    kept = [r for r in read_log(path) if r.get("step", math.inf) <= step]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in kept))
    return kept
