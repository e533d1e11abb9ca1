"""Input checks shared by the geometry functions: clear errors that name the bad value."""

from __future__ import annotations

import numpy as np


def _first_bad(values: np.ndarray, bad: np.ndarray) -> str:
    """The first offending value, printed as the user would have written it (1, 2.5, nan)."""
    v = float(values[bad].flat[0] if values.ndim else values)
    return str(int(v)) if v.is_integer() else repr(v)


def as_dim(d: object, *, name: str = "d", minimum: int = 2) -> np.ndarray:
    """An array of integer dimensions >= ``minimum`` as float64 (exact up to 2**53)."""
    try:
        arr = np.asarray(d, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an integer or an array of integers; got {d!r}") from None
    bad = ~np.isfinite(arr) | (arr != np.floor(arr)) | (arr < minimum)
    if bad.any():
        raise ValueError(
            f"{name} must be an integer >= {minimum} (the sphere S^(d-1) lives in R^d); "
            f"got {name}={_first_bad(arr, bad)}"
        )
    return arr


def as_real(x: object, *, name: str, low: float = -np.inf, high: float = np.inf) -> np.ndarray:
    """An array of real numbers in [low, high]; NaN and values outside raise ValueError."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number or an array of them; got {x!r}") from None
    if np.isnan(arr).any():
        raise ValueError(f"{name} must not be NaN; got {name}={x!r}")
    bad = (arr < low) | (arr > high)
    if bad.any():
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}]; got {name}={_first_bad(arr, bad)}")
    return arr


def as_count(n: object, *, name: str, minimum: int = 1) -> int:
    """A Python int >= minimum (a number of samples, points, trials)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}; got {n!r}")
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={n!r}")
    return int(n)


def scalar_or_array(x: np.ndarray) -> float | np.ndarray:
    """Return a Python float for 0-d results, the array otherwise."""
    return float(x) if np.ndim(x) == 0 else x
