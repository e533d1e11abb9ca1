"""Oracles for the curvature systems that PyPI packages provide.

manify 0.1's package ``__init__`` imports data loaders whose dependencies (anndata, basemap) it
does not declare and we never call, so the Makefile installs it ``--no-deps`` and
:func:`manify_module` imports one of its modules without running that ``__init__``.
"""

import importlib
import importlib.util
import pathlib
import sys
import types
import warnings

import pytest


def _bare_package(name: str, path: pathlib.Path) -> None:
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


@pytest.fixture(scope="session")
def manify_module():
    """``manify_module("predictors.decision_tree")`` → that module of manify 0.1, its package __init__ skipped."""
    spec = importlib.util.find_spec("manify")
    if spec is None:
        pytest.fail("manify is not installed: run `make .venv/.dev-deps` (the Makefile installs manify==0.1)")
    root = pathlib.Path(next(iter(spec.submodule_search_locations)))

    def load(dotted: str) -> types.ModuleType:
        parts = dotted.split(".")
        _bare_package("manify", root)
        for i in range(1, len(parts)):
            _bare_package("manify." + ".".join(parts[:i]), root.joinpath(*parts[:i]))
        with warnings.catch_warnings():   # geoopt, which manify imports, calls the deprecated torch.jit.script
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("manify." + dotted)

    return load


@pytest.fixture(scope="session")
def geoopt():
    """geoopt (the dev oracle for every hyperbolic operation), its torch.jit.script deprecation warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import geoopt

    return geoopt
