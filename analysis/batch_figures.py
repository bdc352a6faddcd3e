"""Speedup against batch size: ``batch_speedup_<workload>.png`` / ``.pdf``, one per workload and
one pooled (``batch_speedup_overall``).

Why: the question batched decoding answers is "up to which batch size does this mode pay?", and
the answer differs per workload (how often tokens exit) and per mode (how deep a batch must go
when one row does not exit). Each figure has two panels per model, device and timing regime: the
throughput speedup (the mode's tokens/s over the whole batch over full's at the same B) and the
per-sequence speedup (full's time per output token over the mode's, per sequence), each against B
on a log2 axis, one line per run with its paired bootstrap 95% interval as a bar, transformers'
batched ``generate`` (against the same full) as a dashed reference (per sequence too, where the
record has it), and 1.0 marked. Runs on a busy
machine are drawn grey and dotted, and named so in the legend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from analysis.batches import batch_file_name, batch_frame, batch_references, batch_workload_order
from analysis.load import unique
from analysis.plotting import NoData, group_marker, model_title, panel_grid, save
from analysis.workload_figures import BASELINE_COLORS, BASELINE_MARKERS
from analysis.workloads import baseline_order

log = logging.getLogger(__name__)

PANELS = {
    "throughput_speedup": "throughput speedup vs full at the same B\n(batch tokens/s; bars: 95% interval)",
    "seq_speedup": "per-sequence speedup vs full at the same B\n(time per output token; bars: 95% interval)",
}
BUSY_LINE = {"color": "0.6", "linestyle": ":", "alpha": 0.6, "mfc": "0.88", "mec": "0.45"}
PANEL_KEYS = ["model", "device", "timing"]
DODGE = 0.05  # log2 units between neighbouring series at one B (about 3.5% of B)


def batch_figures(df: pd.DataFrame) -> dict[str, Callable[[pd.DataFrame], Figure]]:
    """One drawing function per workload with batch results (and ``overall``), keyed by file
    name; {} for records without batch fields."""
    order = batch_workload_order(batch_frame(df))
    return {batch_file_name(w): partial(fig_batch_speedup, workload=w) for w in order}


def make_batch_figures(df: pd.DataFrame, out_dir: str | Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Draw and save every batch figure: ({name: [png, pdf]}, {skipped name: reason}).

    Records without batch fields draw nothing and skip nothing (one log line says so): a
    results set from before batched decoding lists exactly the figures it listed before."""
    figures = batch_figures(df)
    if not figures:
        log.info("no run records batched decoding (metric.batch.*): no batch-size figure")
        return {}, {}
    written, skipped = {}, {}
    for name, draw in figures.items():
        try:
            fig = draw(df)
        except NoData as reason:
            skipped[name] = str(reason)
            log.warning("skipped figure %s: %s", name, reason)
            continue
        written[name] = save(fig, out_dir, name)
        log.info("wrote %s", ", ".join(str(p) for p in written[name]))
    return written, skipped


def fig_batch_speedup(df: pd.DataFrame, workload: str) -> Figure:
    """Throughput and per-sequence speedup against B on one workload: two panels per model,
    device and timing regime. Raises ``NoData`` when no run other than full has a number there."""
    bf = batch_frame(df)
    rows = bf[(bf["workload"] == workload) & (bf["mode"] != "full")]
    if rows.empty:
        raise NoData(f"no run other than full records batched speedups on {workload}")
    refs = batch_references(df)
    refs = refs[refs["workload"] == workload]
    panels = unique(zip(*(rows[k] for k in PANEL_KEYS), strict=True))
    fig, axes = panel_grid(2 * len(panels), width=6.0, height=4.4, max_cols=2)
    for i, panel in enumerate(panels):
        part = rows[_matches(rows, panel)]
        mine = refs[_matches(refs, panel)] if not refs.empty else refs
        handles: dict[str, Line2D] = {}  # one legend for both panels, each style once
        for column, ax in zip(PANELS, axes[2 * i : 2 * i + 2], strict=True):
            drawn = _panel(ax, part, column, mine)
            handles.update({h.get_label(): h for h in drawn if h.get_label() not in handles})
            regime = "" if panel[2] == "eager" else f" · {panel[2]}"
            what = "throughput" if column == "throughput_speedup" else "per sequence"
            ax.set(
                title=f"{model_title(panel[0], part)}{regime} · {workload} · {what}",
                xlabel="batch size B (log2)",
                ylabel=PANELS[column],
            )
            ax.title.set_fontsize(9)
        legend = list(handles.values())
        axes[2 * i + 1].legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _matches(rows: pd.DataFrame, panel: tuple) -> pd.Series:
    """Rows of one panel (NaN matching NaN: a device not recorded)."""
    mask = pd.Series(True, index=rows.index)
    for key, value in zip(PANEL_KEYS, panel, strict=True):
        mask &= rows[key].isna() if pd.isna(value) else rows[key].eq(value)
    return mask


def _panel(ax: Axes, part: pd.DataFrame, column: str, refs: pd.DataFrame | None) -> list[Line2D]:
    """One panel: a line per run (busy runs grey and dotted, after the steady ones), its
    intervals, the references (dashed), 1.0 marked and B as the ticks of a log2 axis; returns the
    legend's entries. Each series sits a little left or right of its B (``_dodge``), so that
    intervals at one B stand side by side rather than on top of each other."""
    runs = [part[part["run_id"] == r].sort_values("batch_size") for r in unique(part["run_id"])]
    runs = [r[np.isfinite(r[column].astype(float))] for r in runs]
    runs = sorted((r for r in runs if not r.empty), key=lambda r: bool(r["busy"].iloc[0]))
    references = _reference_series(refs, column) if refs is not None else []
    count = len(runs) + len(references)
    handles: list[Line2D] = []
    for i, run in enumerate(runs):
        first = run.iloc[0]
        busy = bool(first["busy"])
        label = str(first["name"]) + (" (busy machine)" if busy else "")
        color = "0.6" if busy else f"C{i % 10}"
        style = BUSY_LINE if busy else {"color": color}
        xs = run["batch_size"] * _dodge(i, count)
        (line,) = ax.plot(xs, run[column], marker=group_marker(str(first["group"])), label=label, **style)
        line.set_gid("busy" if busy else "series")
        _interval(ax, run, column, xs, color, "ci", alpha=0.35 if busy else 0.7)
        handles.append(line)
    for j, (name, rows) in enumerate(references, start=len(runs)):
        busy = bool(rows["busy"].any())
        color = "0.6" if busy else BASELINE_COLORS.get(name, "0.35")
        label = f"baseline: {rows.iloc[0]['label']}, batched" + (" (busy machine)" if busy else "")
        xs = rows["batch_size"] * _dodge(j, count)
        marker = BASELINE_MARKERS.get(name, "p")
        (line,) = ax.plot(xs, rows[column], linestyle="--", marker=marker, color=color, label=label)
        line.set(gid="reference", alpha=0.6 if busy else 1.0)
        _interval(ax, rows, column, xs, color, "reference_ci")
        handles.append(line)
    ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1, gid="parity")
    handles.append(Line2D([], [], color="0.5", linestyle=":", label="1.0: as fast as full at that B"))
    bar = Line2D([], [], color="0.4", marker="|", markersize=10, linestyle="none", label="95% interval")
    handles.append(bar)
    sizes = {int(b) for rows in [*runs, *(r for _, r in references)] for b in rows["batch_size"]}
    _log2_axis(ax, sorted(sizes))
    return handles


def _reference_series(refs: pd.DataFrame, column: str) -> list[tuple[str, pd.DataFrame]]:
    """Each batched baseline's rows with a number in ``column``, in the baselines' reading order."""
    out = []
    for name in unique(baseline_order(refs)["baseline"]) if not refs.empty else []:
        rows = refs[refs["baseline"] == name].sort_values("batch_size")
        rows = rows[np.isfinite(rows[column].astype(float))]
        if not rows.empty:
            out.append((name, rows))
    return out


def _dodge(index: int, count: int) -> float:
    """The factor that moves series ``index`` of ``count`` off its B: ``DODGE`` log2 units apart,
    centred on B, so the ticks still read as the batch sizes measured."""
    return float(2 ** ((index - (count - 1) / 2) * DODGE))


def _interval(
    ax: Axes, rows: pd.DataFrame, column: str, xs: pd.Series, color: str, gid: str, alpha: float = 0.7
) -> None:
    """The 95% interval at each B as a vertical bar from its low to its high end, at the series'
    own (dodged) ``xs`` (a ratio can sit off its bootstrap interval's centre, so not symmetric
    error bars)."""
    low, high = rows[f"{column}_ci_low"].astype(float), rows[f"{column}_ci_high"].astype(float)
    shown = np.isfinite(low) & np.isfinite(high)
    if not shown.any():
        return
    bars = ax.vlines(xs[shown], low[shown], high[shown], colors=color)
    bars.set_gid(gid)
    bars.set_alpha(alpha)


def _log2_axis(ax: Axes, sizes: list[int]) -> None:
    """A log2 x axis whose ticks are the batch sizes measured, padded so end bars show."""
    ax.set_xscale("log", base=2)
    if sizes:
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xlim(min(sizes) / 1.4, max(sizes) * 1.4)
    ax.xaxis.set_minor_locator(NullLocator())
