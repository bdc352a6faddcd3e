"""summary.md's accuracy sections: log-likelihood accuracy with its interval, and the points of
the speed-accuracy figures that the figures leave unlabelled.

Why apart: both read ``analysis.accuracy`` (standard errors) and the figures' own front rules, and
every number they state is computed here from the records, so the prose can be trusted as much
as the tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.accuracy import SOURCE_NONE, delta_interval, mean_delta_se, reproduces_full
from analysis.load import accuracy_columns, is_true, unique
from analysis.pareto import accuracy_axis, mark_fronts, run_name
from analysis.summary import ARCH_HEADER, _num, _text, arch_cell, markdown_table
from analysis.workload_summary import LOGLIKELIHOOD_LABEL
from analysis.workloads import series_name

ACCURACY_HEADER = ["model", "run", "KV", ARCH_HEADER, "task", "metric", "ours", "full", "Δ"]
ACCURACY_HEADER += ["Δ 95% interval", "interval from"]
FIGURES = {"speed_accuracy_speedup": "speedup", "speed_accuracy_flops": "flops_saved"}


def accuracy_rows(df: pd.DataFrame) -> list[list[str]]:
    """One row per (run, task): scores, Δ and its interval, with where the interval came from."""
    chosen, rows = accuracy_columns(df), []
    for _, r in df.iterrows():
        for suffix in chosen:
            ours, delta = r.get(f"metric.acc.{suffix}"), r.get(f"metric.acc_delta.{suffix}")
            if pd.isna(ours) and pd.isna(delta):
                continue
            task, _, metric = suffix.partition(".")
            lossless = reproduces_full(r) and pd.isna(delta)
            interval = delta_interval(r, suffix)
            shown = "—" if np.isnan(interval.low) else f"[{interval.low:+.3f}, {interval.high:+.3f}]"
            rows.append(
                [_text(r["model"]), run_name(r), _text(r.get("kv")), arch_cell(r), task, metric]
                + [_num(ours, ".3f"), _num(r.get(f"metric.acc_full.{suffix}"), ".3f")]
                + ["+0.000 (lossless)" if lossless else _num(delta, "+.3f"), shown, interval.source]
            )
    return rows


def loglikelihood_section(df: pd.DataFrame) -> str:
    """Each run's accuracy per lm-eval log-likelihood task beside full's, with Δ's 95% interval."""
    rows = accuracy_rows(df)
    intro = f"{LOGLIKELIHOOD_LABEL[0].upper()}{LOGLIKELIHOOD_LABEL[1:]}."
    if not rows:
        return intro + " No run measured a log-likelihood task (`task=none`)."
    tasks = unique(row[4] for row in rows)
    missing = sum(row[-1] == SOURCE_NONE for row in rows)
    intro += (
        f" {len(rows)} result(s) over {len(tasks)} task(s); per task the first of acc, acc_norm, "
        "exact_match and f1 that it reports (perplexities are left out). Δ's 95% interval adds the "
        "mode's and full's standard errors in quadrature (exact for independent samples, wider than "
        "need be here, where both score the same documents): lm-eval's stderr where the record keeps "
        "it, else the binomial error of the accuracy over the task's documents (`task.limit`, the most "
        "lm-eval scored: fewer documents would widen it)."
    )
    if missing:
        intro += f" {missing} result(s) have neither, so no interval (and no bar in the figures)."
    return "\n\n".join([intro, markdown_table(ACCURACY_HEADER, rows)])


def _name(row: pd.Series, df: pd.DataFrame) -> str:
    """``run_name``, with the heads' architecture where runs of several are shown together."""
    return series_name(row, "heads" in df and len(unique(df["heads"])) > 1)


# ---------------------------------------------------------------- speed-accuracy figures, listed


def _point(row: pd.Series, x: str, y: str, df: pd.DataFrame) -> str:
    shown_x = f"{row[x]:.2f}×" if x == "speedup" else f"FLOPs saved {row[x]:+.1%}"
    return f"{_name(row, df)} ({shown_x}, {row[y]:+.3f})"


def _panel_groups(part: pd.DataFrame, x: str, y: str) -> list[tuple[str, pd.DataFrame]]:
    """A panel's runs by how the figure draws them: labelled (overall front), filled (own series'
    front), hollow (off it), busy (hatched, on no front); the rules the figure applies."""
    series = mark_fronts(part, x, y)
    overall = mark_fronts(series, x, y, by=["model"])["on_front"]
    busy = series["busy"].map(is_true) if "busy" in series else pd.Series(False, index=series.index)
    labelled = overall & (series["mode"] != "full")
    return [
        ("on the overall front (labelled)", series[labelled]),
        ("on their series' front (filled, not labelled)", series[series["on_front"] & ~labelled]),
        ("off their series' front (hollow)", series[~series["on_front"] & ~busy]),
        ("busy machine (hatched, on no front)", series[busy]),
    ]


def figure_points(df: pd.DataFrame, name: str, x: str, y: str, drawn: bool) -> str:
    """One speed-accuracy figure's points per panel, grouped as drawn; the runs it leaves out."""
    data = df[np.isfinite(df[x].astype(float)) & np.isfinite(df[y].astype(float))]
    head = f"- {name}" + ("" if drawn else " (not drawn)")
    if data.empty:
        return f"{head}: no run has both {x} and {y}."
    panels = unique(zip(data["model"], data["timing"], strict=True))
    several = len(unique(data["model"])) > 1
    left_out = len(df) - len(data)
    lines = [head + (f"; {left_out} run(s) without {x} or {y} left out" if left_out else "")]
    for model, timing in panels:
        part = data[(data["model"] == model) & (data["timing"] == timing)]
        groups = [
            f"{label}: " + ", ".join(_point(r, x, y, df) for _, r in rows.iterrows())
            for label, rows in _panel_groups(part, x, y)
            if not rows.empty
        ]
        where = (f"{model}" if several else "") + ("" if timing == "eager" else f" · {timing}")
        lines.append(f"  - {where + ': ' if where else ''}" + "; ".join(groups) + ".")
    return "\n".join(lines)


def interval_sentence(df: pd.DataFrame, y: str) -> str:
    """Which runs carry an accuracy bar in the speed-accuracy figures, and which do not and why."""
    if y != "acc_delta":
        return "The accuracy axis is the held-out agreement proxy: no accuracy interval is drawn."
    lossy = df[~df["lossless"].map(is_true) & np.isfinite(df["acc_delta"].astype(float))]
    se = mean_delta_se(lossy)
    without = lossy[~np.isfinite(se)]
    text = (
        f"Vertical bars: the 95% interval of accuracy Δ (mean over tasks) for {int(np.isfinite(se).sum())} "
        "run(s), as in the accuracy table; lossless runs that reproduced full have Δ = 0 exactly and no bar."
    )
    if not without.empty:
        names = ", ".join(_name(r, df) for _, r in without.iterrows())
        text += f" No bar ({SOURCE_NONE}): {names}."
    return text


def speed_accuracy_section(df: pd.DataFrame, written: dict[str, list[Path]]) -> str:
    """Every point of the speed-accuracy figures: only the overall front is labelled there, so
    every other run is named here, with its coordinates and how it is drawn."""
    y, label = accuracy_axis(df)
    intro = (
        f"y = {label}. The figures label only the runs on the overall front (the dashed line; ✓ in "
        "the Measured table's `on front` column); every point is listed here as (x, accuracy Δ)."
    )
    lines = [figure_points(df, name, x, y, name in written) for name, x in FIGURES.items()]
    return "\n\n".join([intro, "\n".join(lines), interval_sentence(df, y)])
