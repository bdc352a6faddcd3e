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
MODE_MARKERS = {"full": "*", "early-exit": "o", "DSSD": "s", "LayerSkip": "^", "DEL": "D"}
# One colour per confidence metric in every figure, so that a metric is recognised at a glance.
METRIC_COLORS = {"entropy": "C0", "margin": "C1", "max-prob": "C2"}
# One colour per decoding mode where points are coloured by mode (predicted vs measured).
MODE_COLORS = {"full": "0.2", "early-exit": "C2", "dssd": "C0", "layerskip": "C1", "del": "C3"}
# Cost categories (earlyexit.measure.cost_model): legend text and a colour each, layers in blues
# and greens, the overheads outside the layers in warm colours.
CATEGORY_LABELS = {
    "layers_full": "layers, full-depth tokens",
    "layers_draft": "layers, drafts / exited tokens",
    "layers_verify": "verification layers (drafts above their exit)",
    "layers_fill": "KV-fill layers (exited tokens)",
    "kv_projections": "K/V projections (exited tokens, kv=propagate)",
    "head_matmuls": "head matmuls",
    "exit_decisions": "exit decisions (metric, threshold, host read)",
    "unembedding": "unembedding",
    "pass_fixed": "per-pass fixed cost",
}
CATEGORY_COLORS = {
    "layers_full": "#1f4e79",
    "layers_draft": "#5b9bd5",
    "layers_verify": "#2e8b57",
    "layers_fill": "#9acd32",
    "kv_projections": "#d4c21c",
    "head_matmuls": "#c0504d",
    "exit_decisions": "#f79646",
    "unembedding": "#8064a2",
    "pass_fixed": "#a5a5a5",
}


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


def mode_color(mode: object) -> str:
    """The decoding mode's colour (grey for a mode this table does not know)."""
    return MODE_COLORS.get(str(mode), "0.5")


def metric_color(metric: object) -> str:
    """The confidence metric's colour (grey for a metric this table does not know)."""
    return METRIC_COLORS.get(str(metric), "0.5")
