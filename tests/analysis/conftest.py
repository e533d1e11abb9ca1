"""Fixtures of the analysis tests."""

import pytest


@pytest.fixture(scope="session")
def saved(checkpoint):
    """family -> directory of its tiny checkpoint (with a tokenizer): the session's one copy (tests/conftest.py)."""
    return checkpoint
