"""The standard figures, each drawn from a tidy results frame (``analysis.load``) and saved as PNG + PDF.

Each ``fig_*`` function returns a Figure or raises ``NoData`` saying what the results lack, so a
partial results set (only full runs, no DSSD, no per-head data, W&B records) yields the figures
it can support and a logged reason for each one it cannot, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.acceptance import excluded_runs, group_ratios, heads_words, kept_heads
from analysis.accuracy import Z95, mean_delta_se
from analysis.load import (
    COST_CATEGORIES,
    THRESHOLD_MODES,
    exit_histogram_table,
    kv_strategy,
    per_head_table,
    unique,
)
from analysis.measures import (
    MODE_ORDER,
    PREDICTION_BAND,
    prediction_error_by_mode,
    prediction_points,
    speedup_prediction_error,
    time_breakdown,
)
from analysis.pareto import MODE_LABELS, accuracy_axis, front, mark_fronts, mode_group, run_label
from analysis.plotting import (
    CATEGORY_COLORS,
    CATEGORY_LABELS,
    MODE_MARKERS,
    NoData,
    bar_offsets,
    group_marker,
    metric_color,
    mode_color,
    model_title,
    panel_grid,
    save,
)
from analysis.published import dssd_published_ratio, load_published
from analysis.workload_figures import BUSY_LABEL, BUSY_STYLE, spread_labels, workload_figures

log = logging.getLogger(__name__)

# One line style per KV strategy of an exited token, so its fronts are told apart without colour.
KV_LINESTYLES = {"fill": "-", "propagate": "-.", "skip": ":"}
X_AXES = {
    "speedup": ("speedup vs full (time per output token)", 1.0),
    "flops_saved": ("FLOPs saved vs full (share of FLOPs per token)", 0.0),
}


def fig_speed_accuracy(df: pd.DataFrame, x: str = "speedup") -> Figure:
    """(a) Speed-accuracy points and per-series Pareto fronts, one panel per model and timing regime.

    Series: early-exit per metric and KV strategy (over targets; fill, propagate and skip each form
    their own front, named in the legend and told apart by line style), DSSD per metric (each point
    a target), the LayerSkip (E, K) grid and full; filled markers are on their series' front,
    hollow ones off it, the dashed grey line is the front over all series. Only that overall
    front's runs are labelled (lossless runs share Δ = 0, and labelling them all overprinted);
    the summary names every other point. Against speedup, each run's paired bootstrap 95%
    interval is a horizontal bar; the lm-eval accuracy Δ's 95% interval (``analysis.accuracy``)
    is a vertical one where a standard error is known. The legend names every style drawn.
    """
    xlabel, reference = X_AXES[x]
    y, ylabel = accuracy_axis(df)
    data = df[np.isfinite(df[x].astype(float)) & np.isfinite(df[y].astype(float))]
    if data.empty:
        raise NoData(f"no run has both {x} and {y}")
    dropped = len(df) - len(data)
    if dropped:
        log.info("speed-accuracy (%s): %d run(s) without %s or %s left out", x, dropped, x, y)
    se = mean_delta_se(data) if y == "acc_delta" else pd.Series(np.nan, index=data.index)
    data = data.assign(_se=se)
    panels = unique(zip(data["model"], data["timing"], strict=True))
    fig, axes = panel_grid(len(panels), width=7.0)
    for ax, (model, timing) in zip(axes, panels, strict=True):
        part = mark_fronts(data[(data["model"] == model) & (data["timing"] == timing)], x, y)
        _speed_accuracy_panel(ax, part, x, y)
        ax.axhline(0.0, color="0.7", linewidth=0.8, linestyle=":")
        ax.axvline(reference, color="0.7", linewidth=0.8, linestyle=":")
        title = model_title(model, part) + ("" if timing == "eager" else f" · {timing}")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.canvas.draw()  # lay the panels out first, so labels are spread where they will be drawn
    for ax in axes:
        spread_labels(ax)
    return fig


def _speed_accuracy_panel(ax: Axes, part: pd.DataFrame, x: str, y: str) -> None:
    """One panel: each series (filled on its front, hollow off it, intervals), busy runs, the
    overall front with its runs labelled, and a legend naming every style drawn."""
    colors = {group: f"C{i % 10}" for i, group in enumerate(unique(part["group"]))}
    handles: list = []
    for group, color in colors.items():
        points = part[part["group"] == group].sort_values(x)
        marker = group_marker(group)
        style = KV_LINESTYLES.get(str(kv_strategy(points).iloc[0]), "-")
        on, off = points[points["on_front"]], points[~points["on_front"]]
        line = style if len(on) > 1 else "none"
        ax.plot(on[x], on[y], color=color, marker=marker, linestyle=line, label=group, markersize=7)
        if not off.empty:
            hollow = {"mfc": "none", "mec": color, "label": f"_off {group}"}
            ax.plot(off[x], off[y], linestyle="none", marker=marker, **hollow)
        if x == "speedup":
            _speedup_intervals(ax, points, y, color)
        _accuracy_intervals(ax, points, x, y, color)
        handles.append(Line2D([], [], color=color, marker=marker, linestyle=line, label=group))
    _busy_points(ax, part, x, y)
    overall = front(part, x, y, by=["model"])
    if len(overall) > 1:
        ax.plot(overall[x], overall[y], color="0.4", linestyle="--", linewidth=1, gid="overall_front")
    for _, row in overall[overall["mode"] != "full"].iterrows():
        ax.annotate(
            run_label(row),
            (row[x], row[y]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
            color=colors[row["group"]],
        )
    handles += _accuracy_style_handles(ax, part, overall)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _accuracy_style_handles(ax: Axes, part: pd.DataFrame, overall: pd.DataFrame) -> list:
    """Legend entries for the styles that are not a series, each only where it was drawn."""
    gids = {c.get_gid() for c in ax.collections}
    filled = "filled: on its series' front"
    handles = [Line2D([], [], marker="o", color="0.3", linestyle="none", label=filled)]
    if (~part["on_front"]).any():
        label = "hollow: off its series' front"
        handles.append(Line2D([], [], marker="o", mfc="none", color="0.3", linestyle="none", label=label))
    if len(overall) > 1:
        handles.append(Line2D([], [], color="0.4", linestyle="--", label="overall front (its runs labelled)"))
    if "speedup_ci" in gids:
        handles.append(Line2D([], [], color="0.5", linewidth=1.2, label="speedup 95% interval"))
    if "accuracy_ci" in gids:
        bar = Line2D([], [], color="0.5", marker="|", markersize=12, linestyle="none")
        bar.set_label("accuracy Δ 95% interval")
        handles.append(bar)
    if "busy" in gids:
        handles.append(Patch(facecolor="0.88", edgecolor="0.45", hatch="////", label=BUSY_LABEL))
    return handles


def _accuracy_intervals(ax: Axes, points: pd.DataFrame, x: str, y: str, color: str) -> None:
    """The accuracy Δ's 95% interval as a vertical bar, where its standard error is known and not
    0 (a lossless run that reproduced full has Δ = 0 exactly). ``gid`` names them for tests."""
    se = points["_se"].astype(float) if "_se" in points else pd.Series(np.nan, index=points.index)
    shown = points[np.isfinite(se) & (se > 0)]
    if shown.empty:
        return
    half = Z95 * shown["_se"].astype(float)
    bars = ax.vlines(shown[x], shown[y] - half, shown[y] + half, colors=color, linewidth=1.0, alpha=0.7)
    bars.set_gid("accuracy_ci")


def _busy_points(ax, part: pd.DataFrame, x: str, y: str) -> None:
    """Runs timed on a busy machine (or priced by an inconsistent profile), hatched grey over their
    marker: they are off every front, and the reader should see why. ``gid`` keeps them apart
    from the data points in tests."""
    busy = part[part["busy"].astype(bool)] if "busy" in part else part.iloc[:0]
    if not busy.empty:
        ax.scatter(busy[x], busy[y], marker="o", s=90, zorder=2, gid="busy", label=BUSY_LABEL, **BUSY_STYLE)


def _speedup_intervals(ax, points: pd.DataFrame, y: str, color: str) -> None:
    """The speedup's 95% interval as a horizontal bar from its low to its high end (not from the
    point: a median ratio can sit off its bootstrap interval's centre). ``gid`` names them for tests."""
    if "speedup_ci_low" not in points or "speedup_ci_high" not in points:
        return  # a frame built without the interval columns
    low, high = points["speedup_ci_low"].astype(float), points["speedup_ci_high"].astype(float)
    shown = points[np.isfinite(low) & np.isfinite(high) & (points["mode"] != "full")]
    if shown.empty:
        return
    bars = ax.hlines(
        shown[y], shown["speedup_ci_low"], shown["speedup_ci_high"], colors=color, linewidth=1.2, alpha=0.7
    )
    bars.set_gid("speedup_ci")
    for end in ("speedup_ci_low", "speedup_ci_high"):
        ax.scatter(shown[end], shown[y], marker="|", color=color, s=30, alpha=0.7, gid="speedup_ci_cap")


def fig_exit_histograms(df: pd.DataFrame) -> Figure:
    """(b) Share of decoded tokens leaving at each head (bars) and, for calibrated modes, the
    held-out share at the same thresholds (black ticks); one panel per model and series."""
    hist = exit_histogram_table(df[df["mode"] != "full"])
    if hist.empty:
        raise NoData("no exit histogram from an early-exit, DSSD or LayerSkip run")
    heads = per_head_table(df)
    hist = hist.assign(group=mode_group(hist))
    panels = unique(zip(hist["model"], hist["group"], strict=True))
    fig, axes = panel_grid(len(panels))
    for ax, (model, group) in zip(axes, panels, strict=True):
        part = hist[(hist["model"] == model) & (hist["group"] == group)]
        # Bars in the order of what distinguishes the runs (target, or E then K), not run order.
        ordered = part.sort_values(["target", "exit_layer", "draft_length", "max_draft"], kind="stable")
        runs = unique(ordered["run_id"])
        head_rows = heads[heads["run_id"].isin(runs)]
        layers = sorted({*part.loc[~part["final"], "layer"], *head_rows["layer"]})
        slots = [*map(str, layers), "final"]
        for i, run_id in enumerate(runs):
            rows = part[part["run_id"] == run_id]
            shares = [rows.loc[(rows["layer"] == k) & ~rows["final"], "share"].sum() for k in layers]
            shares.append(rows.loc[rows["final"], "share"].sum())
            pos, width = bar_offsets(len(slots), i, len(runs))
            ax.bar(pos, shares, width, color=f"C{i}", label=run_label(rows.iloc[0]))
            held = heads[heads["run_id"] == run_id] if "heldout_exit_share" in heads else heads.iloc[:0]
            if rows.iloc[0]["mode"] in THRESHOLD_MODES and not held.empty:
                by_layer = dict(zip(held["layer"], held["heldout_exit_share"], strict=True))
                expected = [by_layer.get(k, np.nan) for k in layers]
                expected.append(1.0 - np.nansum(list(by_layer.values())))
                ax.scatter(
                    pos,
                    expected,
                    marker="_",
                    color="black",
                    s=80,
                    zorder=3,
                    label="held-out share" if i == 0 else None,
                )
        ax.set_xticks(range(len(slots)), slots)
        ax.set(
            title=f"{model_title(model)} · {group}",
            xlabel="exit layer",
            ylabel="share of tokens",
            ylim=(0, 1.05),
        )
        ax.legend(fontsize=7)
    return fig


def fig_separation(df: pd.DataFrame) -> Figure:
    """(c) How well each confidence metric separates agreeing from disagreeing tokens, per head
    (AUROC on held-out text; 0.5 = chance). Median over the runs that share model and heads."""
    heads = per_head_table(df)
    metrics = sorted(c for c in heads.columns if c.startswith("auroc_"))
    if heads.empty or not metrics:
        raise NoData("no per-head AUROC in the records")
    table = heads.groupby(["model", "heads", "layer"], dropna=False)[metrics].median().reset_index()
    panels = unique(zip(table["model"], table["heads"], strict=True))
    fig, axes = panel_grid(len(panels))
    for ax, (model, arch) in zip(axes, panels, strict=True):
        part = table[(table["model"] == model) & (table["heads"] == arch)].sort_values("layer")
        for i, column in enumerate(metrics):
            pos, width = bar_offsets(len(part), i, len(metrics))
            name = column.removeprefix("auroc_")
            ax.bar(pos, part[column], width, color=metric_color(name), label=name)
        ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1, label="chance")
        ax.set_xticks(range(len(part)), [str(int(v)) for v in part["layer"]])
        ax.set(
            title=f"{model_title(model)} · {arch} heads",
            xlabel="head layer",
            ylabel="AUROC (predicts agreement with final)",
            ylim=(0.4, 1.0),
        )
        ax.legend(fontsize=7)
    return fig


def fig_calibration(df: pd.DataFrame) -> Figure:
    """(d) Calibrated target vs achieved held-out agreement of the tokens each head lets exit
    (points: heads; line: their mean); on the y = x line the calibration transfers exactly."""
    heads = per_head_table(df[df["mode"].isin(THRESHOLD_MODES)])
    if heads.empty or "heldout_agreement_at_target" not in heads:
        raise NoData("no per-head held-out agreement from an early-exit or DSSD run")
    heads = heads[np.isfinite(heads["target"].astype(float))]
    heads = heads.assign(achieved=pd.to_numeric(heads["heldout_agreement_at_target"], errors="coerce"))
    heads = heads.dropna(subset=["achieved"])
    heads = heads.drop_duplicates(["model", "heads", "metric", "target", "layer"])
    if heads.empty:
        raise NoData("no head let any held-out token exit at a calibrated target")
    models = unique(heads["model"])
    fig, axes = panel_grid(len(models))
    for ax, model in zip(axes, models, strict=True):
        part = heads[heads["model"] == model]
        for i, metric in enumerate(unique(part["metric"])):
            points = part[part["metric"] == metric]
            jitter = (i - 1) * 0.004
            color = metric_color(metric)
            ax.scatter(points["target"] + jitter, points["achieved"], color=color, s=14, alpha=0.6)
            mean = points.groupby("target")["achieved"].mean()
            ax.plot(mean.index, mean.values, color=color, marker="o", label=f"{metric} (mean over heads)")
        lo = float(part["target"].min()) - 0.05
        ax.plot([lo, 1.0], [lo, 1.0], color="0.4", linestyle="--", linewidth=1, label="y = x")
        ax.set(
            title=model_title(model),
            xlabel="calibration target (agreement)",
            ylabel="achieved held-out agreement",
        )
        handles, _ = ax.get_legend_handles_labels()
        dot = Line2D([], [], marker="o", color="0.5", alpha=0.6, linestyle="none", markersize=4)
        dot.set_label("one head (small points, coloured by metric)")
        ax.legend(handles=[*handles, dot], fontsize=7)
    return fig


def fig_acceptance(df: pd.DataFrame, published: pd.DataFrame | None = None) -> Figure:
    """(e) Draft acceptance rate of DSSD (per metric, target and heads kept) beside the LayerSkip
    (E, K) grid, with the best-vs-best ratio the DSSD paper reports against a tuned LayerSkip
    baseline, computed only within comparable runs (``analysis.acceptance``: same model, heads
    and workload; DSSD runs that kept one head are hatched and left out, since they are not the
    multi-head method the ratio measures).

    Bars: head drafts only, each labelled with the heads it could exit at (all or priced). Black
    ticks: full-model tokens counted as accepted drafts, as the public DSSD demo counts them
    (records from before that count have none). Dashed line: the published ratio times the best
    comparable LayerSkip acceptance, the DSSD acceptance the published ratio would predict; the
    title gives our ratio under each definition, named, beside the published one."""
    spec = df[df["mode"].isin(["dssd", "layerskip"]) & np.isfinite(df["acceptance_rate"].astype(float))]
    if spec.empty:
        raise NoData("no DSSD or LayerSkip run with an acceptance rate")
    published_ratio = dssd_published_ratio(load_published() if published is None else published)
    models = unique(spec["model"])
    fig, axes = panel_grid(len(models), width=7.0)
    for ax, model in zip(axes, models, strict=True):
        part = spec[spec["model"] == model].sort_values(
            ["mode", "metric", "target", "exit_layer", "draft_length"]
        )
        _acceptance_panel(ax, part, published_ratio)
        ax.set_title(f"{model_title(model)} · {_ratio_note(part, published_ratio)}", fontsize=8)
    return fig


def _acceptance_panel(ax: Axes, part: pd.DataFrame, published_ratio: float) -> None:
    """The bars (degenerate DSSD runs hatched), demo ticks, the published ratio's line per
    comparable group, and a legend naming each."""
    several = len(unique(part["heads"])) > 1
    labels = [_acceptance_label(row, several) for _, row in part.iterrows()]
    left_out = part.index.isin(excluded_runs(part).index)
    colors = ["C0" if m == "dssd" else "C1" for m in part["mode"]]
    bars = ax.barh(range(len(part)), part["acceptance_rate"], color=colors)
    for bar, out in zip(bars, left_out, strict=True):
        if out:
            bar.set(alpha=0.45, hatch="///", gid="left_out")
    handles: list = [Patch(color="C0", label="DSSD"), Patch(color="C1", label="LayerSkip")]
    if left_out.any():
        label = "DSSD, one head kept: not in the ratio"
        handles.append(Patch(facecolor="C0", alpha=0.45, hatch="///", label=label))
    demo = pd.to_numeric(part["acceptance_rate_demo"], errors="coerce").to_numpy(dtype=float)
    if np.isfinite(demo).any():
        label = "full-model tokens counted as drafts (DSSD demo)"
        ax.scatter(demo, range(len(part)), marker="|", color="black", s=120, zorder=3, gid="acceptance_demo")
        tick = Line2D([], [], marker="|", color="black", linestyle="none", markersize=10)
        tick.set_label(label)
        handles.append(tick)
    right = 1.0
    if np.isfinite(published_ratio):
        for i, group in enumerate(group_ratios(part)):
            at = published_ratio * float(group.layerskip["acceptance_rate"])
            style = ("--", ":", "-.")[i % 3]
            ax.axvline(at, color="0.3", linestyle=style, linewidth=1, gid="published_ratio")
            words = f"published ratio {published_ratio:g} × best LayerSkip"
            words += f", {heads_words(group)}" if several else ""
            handles.append(Line2D([], [], color="0.3", linestyle=style, label=words))
            right = max(right, 1.05 * at)
    ax.set_yticks(range(len(part)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="acceptance rate (accepted / drafted), bars: head drafts only", xlim=(0, right))
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))


# Short names of the acceptance definitions (analysis.measures.ACCEPTANCE_DEFINITIONS) for a title.
ACCEPTANCE_SHORT = {
    "acceptance_rate": "head drafts only",
    "acceptance_rate_demo": "full-model tokens as drafts",
}


def _ratio_note(part: pd.DataFrame, published_ratio: float = float("nan")) -> str:
    """Best DSSD / best LayerSkip within each comparable group under each acceptance definition
    that the runs have, named; the published ratio beside it; how many one-head DSSD runs were
    left out."""
    groups = {c: group_ratios(part, c) for c in ACCEPTANCE_SHORT}
    several = len(groups["acceptance_rate"]) > 1 or len(unique(part["heads"])) > 1
    notes = [
        (f"{heads_words(g)}: " if several else "") + f"{g.ratio:.2f}× ({ACCEPTANCE_SHORT[c]})"
        for c, ratios in groups.items()
        for g in ratios
    ]
    if not notes:
        text = "ratio: needs DSSD (more than one head kept) and LayerSkip on the same heads"
    else:
        text = "best DSSD / best LayerSkip = " + "\n".join(notes)
    if notes and np.isfinite(published_ratio):
        text += f"\npublished: {published_ratio:g}× (DSSD paper)"
    left_out = len(excluded_runs(part))
    if left_out:
        text += f"\n{left_out} one-head DSSD run(s) left out of the ratio"
    return text


def _acceptance_label(row: pd.Series, name_arch: bool = False) -> str:
    """A bar's label: the run, and for DSSD the heads it could exit at, so that runs differing
    only in ``calibration.heads`` never share a label; the head architecture where several ran."""
    arch = f" · {row['heads']} heads" if name_arch and isinstance(row.get("heads"), str) else ""
    if row["mode"] == "dssd":
        return f"DSSD {row['metric']} {run_label(row)} · {heads_used(row)}{arch}"
    return f"LayerSkip {run_label(row)}{arch}"


def heads_used(row: pd.Series) -> str:
    """ "all heads (1 2 4 5)" or "priced heads (3)": the choice and the heads kept, where recorded."""
    kept = kept_heads(row)
    choice = row.get("head_choice") if isinstance(row.get("head_choice"), str) else "all"
    return f"{choice} heads" + ("" if kept is None else f" ({' '.join(map(str, kept)) or 'none'})")


def _predicted(df: pd.DataFrame) -> pd.DataFrame:
    """Runs priced by the cost model; records from before it have no predicted time."""
    if "predicted_tpot_ms" not in df:
        return df.iloc[:0]
    return df[np.isfinite(pd.to_numeric(df["predicted_tpot_ms"], errors="coerce"))]


def fig_time_breakdown(df: pd.DataFrame) -> Figure:
    """(f) Where the time goes: per run, the predicted ms per output token in each cost category
    (stacked bar; ``earlyexit.measure.cost_model``) and the measured mean (black diamond). One
    ``full`` bar per panel: the baseline every run measured beside itself. A bar longer than its
    diamond over-predicts; the gap is what the cost model does not explain."""
    bars = time_breakdown(_predicted(df))
    if bars.empty:
        raise NoData("no run has a predicted time breakdown (records from before the cost model)")
    panels = unique(zip(bars["model"], bars["timing"], strict=True))
    most = max(int(((bars["model"] == m) & (bars["timing"] == t)).sum()) for m, t in panels)
    fig, axes = panel_grid(len(panels), width=9.0, height=1.6 + 0.38 * most, max_cols=2)
    for ax, (model, timing) in zip(axes, panels, strict=True):
        part = bars[(bars["model"] == model) & (bars["timing"] == timing)].reset_index(drop=True)
        ys = np.arange(len(part))
        left = np.zeros(len(part))
        for category in COST_CATEGORIES:
            width = part[category].to_numpy(dtype=float)
            if not (width > 0).any():
                continue  # a category no run here pays (e.g. KV fill without early exit)
            ax.barh(
                ys,
                width,
                left=left,
                color=CATEGORY_COLORS[category],
                label=CATEGORY_LABELS[category],
                gid=category,
            )
            left += width
        ax.scatter(
            part["measured_ms"],
            ys,
            marker="D",
            color="black",
            s=22,
            zorder=3,
            label="measured (mean)",
            gid="measured",
        )
        ax.set_yticks(ys, part["label"], fontsize=7)
        ax.invert_yaxis()
        regime = "" if timing == "eager" else f" · {timing}"
        ax.set(
            title=f"Where the time goes: {model_title(model)}{regime}",
            xlabel="predicted ms per output token (bars) · measured mean (◆)",
        )
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _prediction_panel(
    ax, part: pd.DataFrame, x: str, y: str, medians: dict[str, float], low: float, high: float
) -> None:
    """Predicted (``y``) against measured (``x``) on [low, high]: the y = x line, the ±15%
    band around it, one marker set per mode with its median |error| in the legend."""
    line = np.array([low, high])
    lower, upper = (1 - PREDICTION_BAND) * line, (1 + PREDICTION_BAND) * line
    band = ax.fill_between(line, lower, upper, color="0.88", label=f"±{PREDICTION_BAND:.0%}")
    band.set_gid("band")
    ax.plot(line, line, color="0.4", linestyle="--", linewidth=1, label="y = x", gid="identity")
    for mode, median in medians.items():
        mine = part[part["mode"] == mode]
        name = MODE_LABELS.get(mode, str(mode))
        ax.scatter(
            mine[x],
            mine[y],
            color=mode_color(mode),
            marker=MODE_MARKERS.get(name, "o"),
            s=30,
            alpha=0.8,
            zorder=3,
            label=f"{name} (median |error| {median:.0%})",
            gid=f"points:{mode}",
        )
    ax.set(xlim=(low, high), ylim=(low, high))
    ax.set_aspect("equal")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def fig_predicted_vs_measured(df: pd.DataFrame) -> Figure:
    """(g) Predicted vs measured (mean) time per output token for every run and its full
    baseline, coloured by mode, on the y = x line and a ±15% band; the legend gives each mode's
    median |prediction error|. Points off the band are runs the cost model does not explain."""
    points = prediction_points(_predicted(df))
    if points.empty:
        raise NoData("no run has both a predicted and a measured mean time per token")
    errors = prediction_error_by_mode(points, PREDICTION_BAND)
    panels = unique(zip(points["model"], points["timing"], strict=True))
    fig, axes = panel_grid(len(panels), width=7.0, height=4.4, max_cols=2)
    for ax, (model, timing) in zip(axes, panels, strict=True):
        part = points[(points["model"] == model) & (points["timing"] == timing)]
        here = errors[(errors["model"] == model) & (errors["timing"] == timing)]
        medians = dict(zip(here["mode"], here["median_abs_error"].astype(float), strict=True))
        top = 1.1 * float(max(part["measured_ms"].max(), part["predicted_ms"].max()))
        _prediction_panel(ax, part, "measured_ms", "predicted_ms", medians, 0.0, top)
        regime = "" if timing == "eager" else f" · {timing}"
        ax.set(
            title=f"Predicted vs measured: {model_title(model)}{regime}",
            xlabel="measured time per output token (mean, ms)",
            ylabel="predicted by the cost model (ms)",
        )
    return fig


def fig_speedup_predicted_vs_measured(df: pd.DataFrame) -> Figure:
    """(h) Predicted vs measured speedup over ``full`` (from mean times) for every non-full run,
    on the y = x line and a ±15% band; the legend gives each mode's median |speedup error|.
    Why beside (g): each run's mode and baseline are timed interleaved, so a machine that drifted
    since the profile was measured moves both alike and cancels here: what is off this line is
    what the cost model gets wrong, what is off (g)'s but on this one is the machine."""
    runs = _predicted(df)
    runs = runs[runs["mode"] != "full"]
    points = pd.DataFrame(
        {
            "model": runs["model"],
            "timing": runs["timing"],
            "mode": runs["mode"],
            "measured": pd.to_numeric(runs["full_tpot_ms_mean"], errors="coerce")
            / pd.to_numeric(runs["tpot_ms_mean"], errors="coerce"),
            "predicted": pd.to_numeric(runs["predicted_speedup"], errors="coerce"),
            "error": speedup_prediction_error(runs),
        }
    )
    points = points[np.isfinite(points[["measured", "predicted"]].to_numpy(dtype=float)).all(axis=1)]
    if points.empty:
        raise NoData("no run other than full has both a predicted and a measured speedup")
    panels = unique(zip(points["model"], points["timing"], strict=True))
    fig, axes = panel_grid(len(panels), width=7.0, height=4.4, max_cols=2)
    for ax, (model, timing) in zip(axes, panels, strict=True):
        part = points[(points["model"] == model) & (points["timing"] == timing)]
        abs_error = part["error"].abs()
        modes = sorted(unique(part["mode"]), key=lambda m: MODE_ORDER.get(m, len(MODE_ORDER)))
        medians = {m: float(abs_error[part["mode"] == m].median()) for m in modes}
        values = part[["measured", "predicted"]].to_numpy(dtype=float)
        low, high = 0.9 * min(float(values.min()), 1.0), 1.1 * max(float(values.max()), 1.0)
        _prediction_panel(ax, part, "measured", "predicted", medians, low, high)
        ax.axhline(1.0, color="0.6", linewidth=0.6, linestyle=":")
        ax.axvline(1.0, color="0.6", linewidth=0.6, linestyle=":")
        regime = "" if timing == "eager" else f" · {timing}"
        ax.set(
            title=f"Predicted vs measured speedup: {model_title(model)}{regime}",
            xlabel="measured speedup over full (mean times, interleaved)",
            ylabel="predicted by the cost model",
        )
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "speed_accuracy_speedup": lambda df: fig_speed_accuracy(df, "speedup"),
    "speed_accuracy_flops": lambda df: fig_speed_accuracy(df, "flops_saved"),
    "exit_histograms": fig_exit_histograms,
    "separation_auroc": fig_separation,
    "calibration": fig_calibration,
    "acceptance": fig_acceptance,
    "time_breakdown": fig_time_breakdown,
    "predicted_vs_measured": fig_predicted_vs_measured,
    "speedup_predicted_vs_measured": fig_speedup_predicted_vs_measured,
}


def make_all(df: pd.DataFrame, out_dir: str | Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Draw every figure the results support: ({name: [png, pdf]}, {skipped name: reason}).

    Beside ``FIGURES``, one speed-quality figure per generation workload the records hold
    (``speed_quality_<workload>``; none for records from before per-workload results)."""
    written, skipped = {}, {}
    for name, draw in {**FIGURES, **workload_figures(df)}.items():
        try:
            fig = draw(df)
        except NoData as reason:
            skipped[name] = str(reason)
            log.warning("skipped figure %s: %s", name, reason)
            continue
        written[name] = save(fig, out_dir, name)
        log.info("wrote %s", ", ".join(str(p) for p in written[name]))
    return written, skipped
