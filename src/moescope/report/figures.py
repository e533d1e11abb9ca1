"""Matplotlib helpers shared by every report: a headless backend and PNG bytes."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # reports are written headless, on servers and in CI
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

STYLE = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
}


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.4, height: float = 3.8):
    """A figure and its axes in the house style."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained")
    return fig, axes


def png_bytes(fig: Figure) -> bytes:
    """Render and close ``fig``; returns the PNG file's bytes."""
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:`` URI that embeds a PNG in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
