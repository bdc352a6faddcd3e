"""Speed-quality fronts per generation workload: ``speed_quality_<workload>.png`` / ``.pdf``.

Why one figure per workload: a method's speedup and its quality loss both depend on the task
(Spec-Bench's categories spread from 1.06x to 2.66x for one method), so pooling workloads on one
axis would hide exactly what a reader chooses by. Each figure puts the measured speedup on that
workload (with its paired bootstrap 95% interval) against the workload's first quality metric;
full sits at (1, full's quality) and lossless modes on that line. Only front points are labelled,
so labels never pile up; the summary lists every other point. Runs on a busy machine are drawn
grey and hatched, and are left off the fronts.

Baselines timed beside the runs (transformers' generate, assisted and prompt lookup decoding,
transformers' LayerSkip) are drawn as labelled reference points, one per baseline and machine
(``workloads.reference_baselines``), each with its own marker and speedup interval: they say what
a user gets without our code, so they are never on, and never push anything off, our fronts.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Annotation

from analysis.load import unique
from analysis.plotting import NoData, group_marker, model_title, panel_grid
from analysis.workloads import (
    baseline_frame,
    baseline_order,
    file_name,
    headline_metric,
    higher_is_better,
    reference_baselines,
    reference_points,
    speed_quality_points,
    workload_frame,
    workload_info,
    workload_order,
)

BUSY_LABEL = "busy machine (off the fronts)"
BUSY_STYLE = {"facecolors": "0.88", "edgecolors": "0.45", "hatch": "////", "linewidths": 0.8}
FULL_STYLE = {"marker": "*", "color": "black", "s": 140, "zorder": 4}
LABEL_STEP = 9  # points a label moves down when it would overprint another
# Baselines: a marker and colour each, none used by a series of ours (plotting.MODE_MARKERS), so a
# reference is never read as one of our runs; unknown baselines get a pentagon in grey.
BASELINE_MARKERS = {"hf_generate": "P", "assisted": "X", "prompt_lookup": "h", "hf_early_exit": "v"}
BASELINE_COLORS = {"hf_generate": "0.35", "assisted": "#8c564b", "prompt_lookup": "#e377c2"}
BASELINE_COLORS["hf_early_exit"] = "#17becf"


def workload_figures(df: pd.DataFrame) -> dict[str, Callable[[pd.DataFrame], Figure]]:
    """One drawing function per workload the records hold, keyed by its file name; {} for old
    records, so a results set from before per-workload results draws exactly what it drew."""
    order = workload_order(workload_frame(df))
    return {file_name(w): partial(fig_speed_quality, workload=w) for w in order}


def fig_speed_quality(df: pd.DataFrame, workload: str, include_busy: bool = False) -> Figure:
    """Speed-quality points and front of one workload, one panel per model and timing regime.

    Raises ``NoData`` for a workload without a quality metric (held-out text, HumanEval with code
    execution off): its speed stands in the summary's table, with nothing to trade it against.
    """
    wf = workload_frame(df)
    metric = headline_metric(wf, workload)
    if metric is None:
        note = workload_info(wf, workload)["note"]
        raise NoData(f"{workload} records no quality metric{f' ({note})' if note else ''}: speed only")
    points = speed_quality_points(wf, workload, metric, include_busy)
    references = reference_points(reference_baselines(baseline_frame(df)), workload, metric)
    better = higher_is_better(points, metric)
    info = workload_info(wf, workload)
    panels = unique(zip(points["model"], points["timing"], strict=True))
    fig, axes = panel_grid(len(panels), width=7.5, height=4.6, max_cols=2)
    for ax, (model, timing) in zip(axes, panels, strict=True):
        part = points[(points["model"] == model) & (points["timing"] == timing)]
        refs = references[(references["model"] == model) & (references["timing"] == timing)]
        _draw_panel(ax, part, refs)
        regime = "" if timing == "eager" else f" · {timing}"
        ax.set(
            title=f"{model_title(model, part)}{regime} · {workload} ({info['domain']}, {info['prompts']})",
            xlabel=f"speedup vs full on {workload} (end-to-end tokens/s; bars: 95% interval)",
            ylabel=f"{metric} ({'higher' if better else 'lower'} is better)",
        )
        ax.title.set_fontsize(9)
    fig.canvas.draw()  # lay the panels out first, so labels are spread where they will be drawn
    for ax in axes:
        spread_labels(ax)
    return fig


def _draw_panel(ax: Axes, part: pd.DataFrame, refs: pd.DataFrame | None = None) -> None:
    """Full's quality line, the series' points (filled on the front, hollow off it), busy runs
    (grey, hatched), intervals, the front line and front labels, the baselines' reference points
    (``refs``, labelled), and a legend naming every style."""
    full = part[part["mode"] == "full"]
    full_y = float(full["y"].median())
    if np.isfinite(full_y):  # NaN when no run scored full's outputs: then there is no line to draw
        ax.axhline(full_y, color="0.6", linewidth=0.9, linestyle=":", gid="full_quality")
    ax.axvline(1.0, color="0.8", linewidth=0.8, linestyle=":")
    handles: list = []
    runs = part[part["mode"] != "full"]
    measured = runs[~runs["busy"].astype(bool)]
    for i, group in enumerate(unique(measured["group"])):
        rows = measured[measured["group"] == group]
        color, marker = f"C{i}", group_marker(group)
        on, off = rows[rows["on_front"]], rows[~rows["on_front"]]
        ax.scatter(on["x"], on["y"], marker=marker, color=color, s=46, zorder=3, gid="on_front")
        ax.scatter(off["x"], off["y"], marker=marker, facecolors="none", edgecolors=color, s=46, zorder=3)
        _intervals(ax, rows, color)
        handles.append(Line2D([], [], marker=marker, color=color, linestyle="none", label=group))
    busy = runs[runs["busy"].astype(bool)]
    for group in unique(busy["group"]):
        rows = busy[busy["group"] == group]
        ax.scatter(rows["x"], rows["y"], marker=group_marker(group), s=60, zorder=2, gid="busy", **BUSY_STYLE)
        _intervals(ax, rows, "0.6")
    ax.scatter(full["x"], full["y"], gid="full", **FULL_STYLE)
    front = part[part["on_front"]].sort_values("x")
    if len(front) > 1:
        ax.plot(front["x"], front["y"], color="0.3", linestyle="--", linewidth=1, zorder=1, gid="front")
    for _, row in front[front["mode"] != "full"].iterrows():
        ax.annotate(row["name"], (row["x"], row["y"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    if refs is not None and not refs.empty:
        xs = pd.concat([part["x"], part["speedup_ci_high"], refs["x"], refs["speedup_ci_high"]])
        handles += _references(ax, refs, xs)
    handles += _style_handles(full_y, has_busy=not busy.empty or (refs is not None and refs["busy"].any()))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _references(ax: Axes, refs: pd.DataFrame, xs: pd.Series) -> list:
    """Each baseline's reference point (its own marker and colour; busy: hatched grey), its
    speedup interval (dashed) and its label, left of the point in the right half of ``xs`` (every
    x the panel draws, so a label never runs off the axes); returns one legend entry each."""
    finite = xs.astype(float)[np.isfinite(xs.astype(float))]
    middle = (finite.min() + finite.max()) / 2 if not finite.empty else 1.0
    handles = []
    devices = len(unique(refs["device"])) > 1  # one panel per model and timing: name what else differs
    dtypes = "dtype" in refs and len(unique(refs["dtype"])) > 1
    for _, row in baseline_order(refs).iterrows():
        name = row["baseline"]
        marker, color = BASELINE_MARKERS.get(name, "p"), BASELINE_COLORS.get(name, "0.5")
        label = str(row["label"]) + (f" · {row['device']}" if devices else "")
        label += f" · {row['dtype']}" if dtypes else ""
        style = BUSY_STYLE if row["busy"] else {"color": color, "edgecolors": "black", "linewidths": 0.6}
        point = ([row["x"]], [row["y"]])
        ax.scatter(*point, marker=marker, s=70, zorder=5, gid="reference", label=label, **style)
        low, high = float(row["speedup_ci_low"]), float(row["speedup_ci_high"])
        if np.isfinite(low) and np.isfinite(high):
            bar = ax.hlines([row["y"]], [low], [high], colors=color, lw=1.1, linestyles="--")
            bar.set_gid("reference_ci")
            bar.set_alpha(0.8)
        right = row["x"] > middle
        text = ax.annotate(
            label,
            (row["x"], row["y"]),
            textcoords="offset points",
            xytext=(-5 if right else 5, -10),
            ha="right" if right else "left",
            fontsize=7,
            style="italic",
        )
        text.set_gid("reference_label")
        busy = " (busy machine)" if row["busy"] else ""
        entry = Line2D([], [], marker=marker, color=color, mec="black", linestyle="none")
        entry.set_label(f"baseline: {label}{busy}")
        handles.append(entry)
    return handles


def _intervals(ax: Axes, rows: pd.DataFrame, color: str) -> None:
    """Each run's speedup interval as a horizontal bar from its low to its high end (a median ratio
    can sit off its bootstrap interval's centre, so not symmetric error bars)."""
    low, high = rows["speedup_ci_low"].astype(float), rows["speedup_ci_high"].astype(float)
    shown = rows[np.isfinite(low) & np.isfinite(high)]
    if not shown.empty:
        bars = ax.hlines(shown["y"], shown["speedup_ci_low"], shown["speedup_ci_high"], colors=color, lw=1.1)
        bars.set_gid("speedup_ci")
        bars.set_alpha(0.7)


def _style_handles(full_y: float, has_busy: bool) -> list:
    """Legend entries for the styles that are not a series: full, filled / hollow, busy, lines."""
    handles = [
        Line2D([], [], marker="*", color="black", markersize=11, linestyle="none", label="full"),
        Line2D([], [], color="0.6", linestyle=":", label=f"full's quality ({full_y:.3g})"),
        Line2D([], [], marker="o", color="0.3", linestyle="none", label="filled: on the front (labelled)"),
        Line2D([], [], marker="o", mfc="none", color="0.3", linestyle="none", label="hollow: off the front"),
        Line2D([], [], color="0.3", linestyle="--", label="front (busy runs left out)"),
        Line2D([], [], color="0.5", linewidth=1.1, label="speedup 95% interval"),
    ]
    if has_busy:
        busy = Patch(facecolor="0.88", edgecolor="0.45", hatch="////", label=BUSY_LABEL)
        handles.append(busy)
    return handles


def spread_labels(ax: Axes) -> None:
    """Move each annotation down, a step at a time, until it overprints no label placed before it.

    Why not a layout library: front points are few (a front is monotone, so its labels mostly
    clear each other already); a plain greedy pass is enough and keeps the figure reproducible.
    """
    renderer = ax.figure.canvas.get_renderer()
    labels = sorted((c for c in ax.texts if isinstance(c, Annotation)), key=lambda a: -a.xy[1])
    placed = []
    for label in labels:
        for _ in range(40):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            dx, dy = label.xyann
            label.xyann = (dx, dy - LABEL_STEP)
        placed.append(label.get_window_extent(renderer))
