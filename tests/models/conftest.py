import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_checkpoints.py and tiny/: the tiny saved models

import tiny_checkpoints


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """family -> directory of its saved tiny checkpoint (+ tokenizer), written once per session."""
    return tiny_checkpoints.saver(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def loaded(checkpoint):
    """family -> (model, tokenizer, views) loaded from disk by transformers' own ``from_pretrained``
    (``load_moe_model(loader="transformers")``, the independent reference), once per session."""
    from moescope.models import load_moe_model

    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_moe_model(checkpoint(family), loader="transformers")
        return cache[family]

    return get
