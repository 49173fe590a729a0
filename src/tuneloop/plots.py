"""Shared pieces of the self-contained HTML reports (eval, monitor): plots as base64 PNG, numbers as text."""

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


def format_number(value: Any, digits: int = 4) -> str:
    """A number for a report table: '–' for None, thousands separators for integers and large values."""
    import numpy as np

    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
