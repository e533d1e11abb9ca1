"""Keep freed memory for reuse, so that large CPU buffers cost no page faults.

glibc's ``malloc`` serves every allocation of 32 MiB and more with fresh ``mmap`` pages and
gives them back on ``free``. A new (E, 2I, H) float32 weight gradient — 32 MiB for 8 experts
of Mixtral's proportions at H=512, I=1024, and for 64 experts at I=128 — then page-faults on
its first write on every backward, which costs several times the write itself. At a small
batch that is a large share of the MoE layer's forward+backward, whichever implementation
runs it (transformers' experts pay it alike); ``moescope bench moe --system-malloc`` shows
the difference.

:func:`retain_freed_memory` asks glibc (``mallopt``) to serve every allocation from its heap
and to keep what is freed there: later allocations reuse warm pages. The process then keeps its
peak heap until it exits — the right trade for a training or benchmark loop that allocates the
same buffers every step, not for a long-lived process with one large spike. PyTorch's CPU
performance guide gets the same effect by preloading jemalloc or tcmalloc. It is process-wide,
so moescope never calls it on import: ``moescope bench moe`` calls it (``--system-malloc`` to
measure without), and a user's training script may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1       # the largest int: keep up to 2 GiB of free heap top


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap and never give freed memory back to the system.

    Returns True where it took effect (Linux with glibc), False elsewhere (other C libraries,
    macOS, Windows): there nothing changes.
    """
    libc = _glibc()
    if libc is None:
        return False
    # M_MMAP_MAX = 0: no allocation gets its own mmap (freed, it would go back to the system);
    # M_TRIM_THRESHOLD: nor is the top of the heap (up to 2 GiB of it).
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version          # glibc only (musl has no such function)
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return libc
