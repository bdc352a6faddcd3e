"""Shared figure plumbing: headless figures, panel grids, run labels, PNG + PDF output.

Figures are built as ``matplotlib.figure.Figure`` objects on the Agg canvas, never through
``pyplot``: no global backend switch, no GUI, no figure left open in a long sweep or a test run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FORMATS = ("png", "pdf")
MODE_MARKERS = {"full": "*", "early-exit": "o", "DSSD": "s", "LayerSkip": "^"}
# One colour per confidence metric in every figure, so that a metric is recognised at a glance.
METRIC_COLORS = {"entropy": "C0", "margin": "C1", "max-prob": "C2"}


def bar_offsets(slots: int, index: int, count: int) -> tuple[np.ndarray, float]:
    """x positions and width of bar series ``index`` of ``count`` grouped side by side per slot."""
    width = 0.8 / count
    return np.arange(slots) - 0.4 + width * (index + 0.5), width


class NoData(Exception):
    """The results hold nothing this figure can show; the message says what is missing."""


def panel_grid(
    n: int, width: float = 5.0, height: float = 3.8, max_cols: int = 3
) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels in rows of at most ``max_cols`` (unused cells hidden)."""
    if n < 1:
        raise NoData("no panel to draw")
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=150 if fmt == "png" else None)
        paths.append(path)
    return paths


def model_title(model: object, df: pd.DataFrame | None = None) -> str:
    """Panel title: the model's short name and, where recorded, the device it ran on."""
    name = Path(str(model)).name or str(model)
    if df is not None and "device" in df:
        devices = sorted({str(d) for d in df["device"].dropna()})
        if devices:
            name += f" ({', '.join(devices)})"
    return name


def group_marker(group: str) -> str:
    """Marker of a series, by its mode (the part of the group label before the metric)."""
    return MODE_MARKERS.get(group.split(" · ")[0], "o")


def metric_color(metric: object) -> str:
    """The confidence metric's colour (grey for a metric this table does not know)."""
    return METRIC_COLORS.get(str(metric), "0.5")
