"""Plots for self-contained HTML reports: a drawing function's figure as a base64 PNG for an <img> data URI."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any


def png_base64(draw: Callable[..., Any], *args: Any) -> str:
    """Run `draw(plt, *args)` (it returns a figure) with matplotlib's Agg backend; the PNG as base64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt, *args)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()
