"""retain_freed_memory: a freed large buffer's pages are reused, counted in page faults (not time)."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from moescope.moe.memory import retain_freed_memory

def faults_of_fresh_buffer():
    for _ in range(3):                               # 64 MiB, freed at once; a steady state to measure in
        torch.empty(16 * 2**20).fill_(1.0)           # (torch's first calls put allocations of their own on the heap)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

if sys.argv[1] == "retain":
    assert retain_freed_memory()
print(faults_of_fresh_buffer())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_retained_memory_is_reused_without_page_faults():
    faults = {mode: int(subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                                       text=True).stdout) for mode in ("system", "retain")}
    assert faults["system"] >= 32           # 64 MiB of fresh mmap pages: 16,384 faults (32 with 2 MiB pages)
    assert faults["retain"] * 20 < faults["system"]


def test_returns_false_without_glibc(monkeypatch):
    from moescope.moe import memory

    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.retain_freed_memory() is False
