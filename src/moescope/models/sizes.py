"""Memory sizes: ``"4GB"`` -> bytes (:func:`parse_size`) and bytes -> ``"3.73 GiB"`` (:func:`format_size`),
the one reader and writer of sizes for budgets (``--max-memory``), plans and reports."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(size: str | int) -> int:
    """A memory size in bytes: ``"4GB"`` (10^9), ``"4GiB"`` / ``"4G"`` (2^30), ``"512MiB"``, ``123``.

    SI suffixes (KB, MB, GB, TB) are decimal, IEC ones (KiB, MiB, GiB, TiB) and bare K/M/G/T binary,
    as ``docker --memory`` reads them; case does not matter.
    """
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"a memory size must be a string such as '4GB' or an int of bytes; got {size!r}")
    if isinstance(size, int):
        value = size
    else:
        m = _SIZE.match(size)
        unit = m and m.group(2).upper()
        if m is None or unit not in _UNITS:
            raise ValueError(f"memory size {size!r} is not a size; write a number and a unit such as 4GB, "
                             f"512MiB or 8G (units: {', '.join(u for u in _UNITS if u)})")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"memory size must be positive; got {size!r}")
    return value


def format_size(nbytes: float) -> str:
    """``1536 * 2**20`` -> ``'1.50 GiB'``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"
