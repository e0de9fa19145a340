"""Writing figures and pictures to PNG: one place, atomic, no display needed."""

from __future__ import annotations

import io
import os

from cxrdata.utils.io import atomic_write_bytes


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100, tight: bool = False) -> str:
    """Writes a Matplotlib `Figure` to a PNG at `path` atomically; returns the path.

    Draws through the Agg canvas, so it works without a display and never
    touches pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)


def save_picture(image, path: str | os.PathLike) -> str:
    """Writes a PIL image to a PNG at `path` atomically; returns the path."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)
