"""Fixtures the lab's checkpoint tests share (``lab --model`` on tiny Hugging Face checkpoints)."""

from dataclasses import replace

import pytest
import torch
from lab_fixtures import SMALL


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; several oversubscribe the CPUs when other tests run beside these."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def small_external(monkeypatch):
    """run_lab measures checkpoints with :data:`SMALL` (the default routes 4k tokens per domain)."""
    import moescope.lab.external as external

    monkeypatch.setattr(external, "ExternalConfig",
                        lambda seed=0, dtype="float32", device="cpu": replace(SMALL, dtype=dtype, device=device))
