"""Fixtures shared by the analysis tests: every family's tiny checkpoint, saved once per session."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))  # tiny_checkpoints.py and tiny/
import tiny_checkpoints


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """family -> directory of its tiny checkpoint (with a tokenizer), written on first use."""
    return tiny_checkpoints.saver(tmp_path_factory.mktemp("analysis-checkpoints"))
