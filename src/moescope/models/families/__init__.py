"""The registry of model families: one file per family, each defining ``FAMILY``.

Every module in this package whose name does not start with ``_`` must define ``FAMILY``, a
:class:`~moescope.models.family.Family`; they are collected here in file-name order. Every
table the rest of moescope uses is derived from them:

* :data:`BY_NAME` — family name (a live view's ``family``) -> Family;
* :data:`BY_MODEL_TYPE` — ``config.json`` ``model_type`` -> Family (what can be loaded);
* :func:`for_block` — a live module -> its Family, or None;
* :func:`supported_model_types` — the loadable model types, for error messages;
* the block class -> converter table of :func:`moescope.moe.from_hf`, filled here (importing this
  package registers every family's ``from_hf`` with :func:`moescope.moe.lift.register_converter`).

Adding a family is one file here plus its tiny checkpoint in ``tests/models/tiny/``; the
common checks of ``tests/models/test_registry.py`` then run on it.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from moescope.models.family import Family
from moescope.moe.lift import register_converter


def _discover() -> tuple[Family, ...]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if not isinstance(family, Family):
            raise TypeError(f"{module.__name__} must define FAMILY, a moescope.models.family.Family")
        found.append(family)
    return tuple(found)


def _index(families: tuple[Family, ...], key) -> dict:
    table: dict = {}
    for family in families:
        for k in key(family):
            if k in table:
                raise ValueError(f"{k!r} is claimed by two families: {table[k].name} and {family.name}")
            table[k] = family
    return table


FAMILIES: tuple[Family, ...] = _discover()
BY_NAME: dict[str, Family] = _index(FAMILIES, lambda f: (f.name,))
BY_MODEL_TYPE: dict[str, Family] = _index(FAMILIES, lambda f: f.model_types)
_BY_CLASS_NAME: dict[str, Family] = _index(FAMILIES, lambda f: [b for b in f.blocks if isinstance(b, str)])
_BY_TYPE: dict[type, Family] = _index(FAMILIES, lambda f: [b for b in f.blocks if isinstance(b, type)])



def _register_converters(families: tuple[Family, ...]) -> None:
    """Tell :func:`moescope.moe.from_hf` which converter lifts each block class (see :mod:`moescope.moe.lift`)."""
    for family in families:
        if family.from_hf is not None:
            for block in family.blocks:
                register_converter(block if isinstance(block, str) else block.__name__, family.from_hf)


_register_converters(FAMILIES)


def for_block(module: nn.Module) -> Family | None:
    """The family whose MoE block ``module`` is, or None."""
    for kind, family in _BY_TYPE.items():
        if isinstance(module, kind):
            return family
    return _BY_CLASS_NAME.get(type(module).__name__)


def supported_model_types() -> str:
    """Every loadable model type with its family's title, for error messages."""
    return ", ".join(f"{f.title} ({t})" for t, f in BY_MODEL_TYPE.items())


__all__ = ["BY_MODEL_TYPE", "BY_NAME", "FAMILIES", "for_block", "supported_model_types"]
