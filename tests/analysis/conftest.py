"""Fixtures shared by the analysis tests: every family's tiny checkpoint, saved once per session."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))  # tiny_checkpoints.py and tiny/
import tiny_checkpoints


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """family -> directory of its tiny checkpoint (with a tokenizer), written on first use."""
    root = tmp_path_factory.mktemp("analysis-checkpoints")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = tiny_checkpoints.save(family, root / family, seed=tiny_checkpoints.seed_of(family))
        return cache[family]

    return get
