"""One file per lecture claim, discovered (scikit-learn's ``all_estimators`` pattern).

Every module ``cNN_<name>.py`` declares itself:

* ``ID`` (the claim's number), ``CLAIM`` (in English), ``LECTURE`` (the lecture's own words);
* ``NEEDS``: the experiments it reads (``sphere``, ``digits``, ``sparse``, ``curvature``, ``training``);
* ``FIGURES``: the figures its section shows;
* ``from_lab(data) -> Verdict``: the verdict from the experiments' data (``data[name]`` per experiment);
* optionally ``from_checkpoint(data) -> Verdict``: the same rule on a user's checkpoint
  (``data["checkpoint"]``, :mod:`moescope.lab.external`), and ``NEEDS_TRAINING``: why it cannot be
  measured on a given checkpoint (it compares the lab's own training runs).

Adding a claim is one file plus its test: :func:`all_claims` finds it, the lab runs what it needs,
the report shows it.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

_NAME = re.compile(r"c(\d\d)_\w+$")
REQUIRED = ("ID", "CLAIM", "LECTURE", "NEEDS", "FIGURES", "from_lab")


def all_claims() -> dict[int, ModuleType]:
    """Every claim module of this package by its ``ID``, in ID order; checks each declares what it must."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if not _NAME.match(info.name):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        missing = [a for a in REQUIRED if not hasattr(module, a)]
        if missing:
            raise TypeError(f"claim module {module.__name__} lacks {missing}")
        if module.ID in found:
            raise TypeError(f"claim {module.ID} is declared twice: {found[module.ID].__name__} and {module.__name__}")
        found[module.ID] = module
    return dict(sorted(found.items()))
