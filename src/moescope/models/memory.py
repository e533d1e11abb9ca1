"""Process-wide allocator settings that keep a model's memory bounded over many forwards.

Two allocators keep memory that an analysis never uses again; :func:`bound_allocators` (called by
:func:`~moescope.models.loading.load_moe_model` and
:func:`~moescope.models.streaming.stream_moe_model`) turns both off:

* **oneDNN's primitive cache.** A bfloat16 / float16 matmul on the CPU runs through oneDNN, which
  caches each compiled primitive (with its packed copy of the weights) by shape, up to 1024 of them.
  An MoE layer's per-expert GEMMs change shape with every batch (each expert receives a different
  number of tokens), so almost every forward adds new entries that are never reused: on a 4-layer
  bfloat16 Mixtral (hidden 1024, 8 experts, 1,024 tokens per forward) resident memory grew by
  ~120 MiB per forward until the cache was full. The capacity is read from
  ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` when oneDNN first runs; this sets it to :data:`ONEDNN_CACHE`
  unless the user has set it (float32 GEMMs go to MKL and are unaffected). A small cache keeps the
  fixed-shape primitives (attention, router) that are reused; the experts' primitives are rebuilt, which
  makes each forward somewhat slower.
* **glibc's mmap threshold.** glibc raises the threshold to the size of each freed mmapped block (up
  to 32 MiB), so after a large tensor is freed its successors are carved out of the heap, which
  fragments and stays resident (measured: +70 MiB of RSS per 200 MiB streamed layer); pinning the
  threshold at :data:`MMAP_THRESHOLD` turns that adjustment off. A no-op off glibc.

Both are process-wide and harmless elsewhere; ``tests/models/test_allocators.py`` checks that loading sets them.
"""

from __future__ import annotations

import os

__all__ = ["MMAP_THRESHOLD", "ONEDNN_CACHE", "bound_allocators"]

#: allocations above this size get their own mmap and go back to the OS when freed (glibc's M_MMAP_THRESHOLD)
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc malloc.h
#: oneDNN primitives kept (its default is 1024); MoE shapes change every batch, so a large cache only grows
ONEDNN_CACHE = 64


def bound_allocators() -> None:
    """Cap oneDNN's primitive cache (unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is set) and pin glibc's mmap
    threshold. Call before the first bfloat16 matmul of the process: oneDNN reads its setting once."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except OSError:
        pass
