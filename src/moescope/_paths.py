"""Checks on the paths (and the model's ``--dtype`` / ``--device``) a command is given, made before any work
starts.

Each ``check_*`` raises a ``ValueError`` that names the path, what is wrong with it and what
is allowed; :func:`option` turns one into a typer callback, so the command line refuses the
value while it parses (a clean usage error, exit code 2) — before a command imports, loads,
trains or measures anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import typer

T = TypeVar("T")


def _writable(folder: Path) -> bool:
    """Whether files can be made in the existing folder ``folder``."""
    return os.access(folder, os.W_OK | os.X_OK)


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest ancestor that does (the folder a mkdir starts from)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_can_make(path: Path, kind: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a folder we may write in."""
    base = _nearest_existing(path)
    if not base.is_dir():
        raise ValueError(f"{path}: {base} is a file, so no {kind} can be made under it")
    if not _writable(base):
        raise ValueError(f"{path}: cannot write in {base} (permission denied); choose a {kind} you can write to")


def check_out_dir(path: Path) -> Path:
    """An output folder: new (made, with its parents, when the report is written) or an existing folder
    we may write in (the files the command writes replace those of the same name; others are kept)."""
    path = Path(path)
    target = path.expanduser()
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ValueError(f"{path} exists and is not a folder; give a new folder or an existing one "
                             "(the command writes several files into it)")
        if not _writable(target):
            raise ValueError(f"{path}: cannot write in this folder (permission denied); choose a folder you can "
                             "write to")
        return path
    _check_can_make(target, "folder")
    return path


def check_out_file(path: Path) -> Path:
    """An output file: new, or an existing file (replaced); never a folder."""
    path = Path(path)
    target = path.expanduser()
    if target.is_dir():
        raise ValueError(f"{path} is a folder; give a file name (a new file, or an existing file to replace)")
    if target.exists():
        if not _writable(target.absolute().parent) or not os.access(target, os.W_OK):
            raise ValueError(f"{path}: cannot replace this file (permission denied)")
        return path
    _check_can_make(target.parent, "file")
    return path


def check_in_file(path: Path) -> Path:
    """An input file: it exists, is a file (not a folder) and can be read."""
    path = Path(path)
    target = path.expanduser()
    if not target.exists():
        raise ValueError(f"{path}: no such file; expected a readable file")
    if not target.is_file():
        raise ValueError(f"{path} is not a file; expected a readable file")
    if not os.access(target, os.R_OK):
        raise ValueError(f"{path} cannot be read (permission denied)")
    return path


def check_checkpoint_dir(path: Path) -> Path:
    """A model checkpoint: an existing folder we may read (its contents are checked when it is loaded)."""
    path = Path(path)
    target = path.expanduser()
    what = "a local Hugging Face MoE checkpoint folder (config.json, safetensors weights, tokenizer)"
    if not target.exists():
        raise ValueError(f"{path} does not exist; expected {what}")
    if not target.is_dir():
        raise ValueError(f"{path} is not a folder; expected {what}")
    if not os.access(target, os.R_OK | os.X_OK):
        raise ValueError(f"{path} cannot be read (permission denied); expected {what}")
    return path


def check_domain_spec(spec: str) -> str:
    """``NAME=FILE``: a domain label and a readable text file."""
    name, sep, file = spec.partition("=")
    if not sep or not name or not file:
        raise ValueError(f"expected NAME=FILE (e.g. code=src.py); got {spec!r}")
    try:
        check_in_file(Path(file))
    except ValueError as err:
        raise ValueError(f"{spec}: {err}") from None
    return spec


def check_dtype_name(name: str) -> str:
    """``--dtype``: a name of :data:`moescope.models.loading.DTYPES`."""
    from moescope.models.loading import check_dtype

    check_dtype(name)
    return name


def check_device_name(name: str) -> str:
    """``--device``: one of :data:`moescope.models.loading.DEVICES` that this machine has."""
    from moescope.models.loading import check_device

    check_device(name)
    return name


def check_contrast_spec(spec: str) -> str:
    """``NAME=FILE`` (a text, as :func:`check_domain_spec`) or a bare ``NAME`` (a lab run's domain)."""
    if "=" not in spec:
        if not spec.isidentifier():
            raise ValueError(f"expected NAME=FILE, or a lab domain's NAME; got {spec!r}")
        return spec
    return check_domain_spec(spec)


def option(check: Callable[[T], T]) -> Callable:
    """A typer callback that runs ``check`` on the value (each item of a repeated option; None passes)
    and reports its ``ValueError`` as a usage error of that option."""

    def callback(ctx: typer.Context, param: typer.CallbackParam, value):
        if ctx.resilient_parsing or value is None:
            return value
        try:
            if isinstance(value, Sequence) and not isinstance(value, str):
                return [check(v) for v in value]
            return check(value)
        except ValueError as err:
            raise typer.BadParameter(str(err), ctx=ctx, param=param) from None

    return callback
