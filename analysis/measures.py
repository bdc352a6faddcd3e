"""Headline numbers derived from several runs at once (best of a grid, ratios between modes).

Kept apart from the figures so that the summary and the published comparison compute them the same
way without importing matplotlib.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from analysis.acceptance import group_ratios, heads_words
from analysis.load import COST_CATEGORIES, kv_strategy
from analysis.pareto import run_label, run_name

# The two acceptance definitions (DESIGN.md, "The public DSSD demo, read closely"): column -> the
# words that must stand beside any number computed from it.
ACCEPTANCE_DEFINITIONS = {
    "acceptance_rate": "head drafts only",
    "acceptance_rate_demo": "full-model tokens counted as accepted drafts, as the public DSSD demo counts",
}


def acceptance_ratio(df: pd.DataFrame, column: str = "acceptance_rate") -> float:
    """Best DSSD acceptance over best LayerSkip acceptance on the same model and heads, as the DSSD
    paper compares against a manually tuned LayerSkip baseline, under the definition ``column``
    holds (see ``ACCEPTANCE_DEFINITIONS``). DSSD runs that kept one head are left out
    (``analysis.acceptance``). NaN unless exactly one comparable group has both modes: with
    several, ``analysis.acceptance.group_ratios`` gives one ratio each."""
    ratios = group_ratios(df, column)
    return ratios[0].ratio if len(ratios) == 1 else float("nan")


def best_speedup(df: pd.DataFrame, modes: tuple[str, ...]) -> tuple[float, str]:
    """(highest speedup among runs of ``modes``, which run it was); NaN and a reason if none."""
    rows = df[df["mode"].isin(modes)]
    rows = rows[np.isfinite(pd.to_numeric(rows["speedup"], errors="coerce"))]
    if rows.empty:
        return float("nan"), f"no {'/'.join(modes)} run"
    row = rows.loc[rows["speedup"].astype(float).idxmax()]
    return float(row["speedup"]), f"best {row['mode']} ({run_label(row)})"


def acceptance_ratios(df: pd.DataFrame) -> list[tuple[float, str]]:
    """The DSSD / LayerSkip acceptance ratio under each definition, each with its definition and,
    where several head sets ran, the heads it compares on; NaN with the definition when no
    comparable pair has it."""
    out = []
    for column, what in ACCEPTANCE_DEFINITIONS.items():
        ratios = group_ratios(df, column)
        several = len(ratios) > 1
        out += [(r.ratio, what + (f" ({heads_words(r)})" if several else "")) for r in ratios]
        if not ratios:
            out.append((float("nan"), what))
    return out


def depth_layers(model_shape: object) -> float:
    """The number of layers in a record's ``model_shape`` ("... layers=24 ..."), NaN if absent."""
    match = re.search(r"\blayers=(\d+)", model_shape) if isinstance(model_shape, str) else None
    return float(match.group(1)) if match else float("nan")


def kv_runs(df: pd.DataFrame, kv: str, measured: str) -> pd.DataFrame:
    """Early-exit runs of one KV strategy that have a finite ``measured`` column."""
    rows = df[(df["mode"] == "early-exit") & (kv_strategy(df) == kv)]
    return rows[np.isfinite(pd.to_numeric(rows[measured], errors="coerce"))]


def fewest_layers(df: pd.DataFrame, kv: str = "propagate") -> tuple[float, str]:
    """(fewest layers per token among early-exit runs of ``kv``, that run with its share of depth,
    FLOPs saved and accuracy), the nearest thing to CALM's layers-per-token figure."""
    rows = kv_runs(df, kv, "layers_per_token")
    if rows.empty:
        return float("nan"), f"no early-exit run with engine.kv={kv}"
    row = rows.loc[rows["layers_per_token"].astype(float).idxmin()]
    return float(row["layers_per_token"]), f"fewest layers/token, {kv_detail(row)}"


def kv_detail(row: pd.Series) -> str:
    """One early-exit run's depth and savings in words, for a table cell."""
    depth = depth_layers(row.get("model_shape"))
    share = f" ({row['layers_per_token'] / depth:.0%} of {depth:.0f} layers)" if np.isfinite(depth) else ""
    accuracy = row.get("acc_delta") if pd.notna(row.get("acc_delta")) else row.get("agreement_delta")
    kind = "acc Δ" if pd.notna(row.get("acc_delta")) else "agreement Δ"
    return (
        f"{run_name(row)}: {row['layers_per_token']:.2f} layers/token{share}, FLOPs saved "
        f"{row['flops_saved']:+.1%}, {kind} {accuracy:+.3f}"
    )


def best_kv_speedup(df: pd.DataFrame, kv: str = "propagate") -> tuple[float, str]:
    """(highest measured speedup among early-exit runs of ``kv``, which run it was)."""
    rows = kv_runs(df, kv, "speedup")
    if rows.empty:
        return float("nan"), f"no early-exit run with engine.kv={kv}"
    row = rows.loc[rows["speedup"].astype(float).idxmax()]
    return float(row["speedup"]), f"best measured early-exit KV {kv} ({run_label(row)})"


# ---------------------------------------------------------------- cost model: breakdown and prediction
# What the predicted-time figures and the summary read, computed once here so they agree. Records
# from before the cost model (no predicted time) are left out by both.

MODE_ORDER = {"full": 0, "early-exit": 1, "dssd": 2, "layerskip": 3, "del": 4}
# The cost model's target: a median |prediction error| within this share per mode.
PREDICTION_BAND = 0.15


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Runs in reading order: by mode, then metric, target, LayerSkip's E and K."""
    keys = [k for k in ("metric", "target", "exit_layer", "draft_length", "max_draft") if k in df]
    order = df.assign(_order=df["mode"].map(MODE_ORDER).fillna(len(MODE_ORDER)))
    return order.sort_values(["_order", *keys], kind="stable").drop(columns="_order")


def time_breakdown(df: pd.DataFrame) -> pd.DataFrame:
    """Predicted ms per output token per cost category, one row per bar of "where the time goes".

    Per model and timing regime: one ``full`` row (the median, per category, of the full
    baselines that every run measured beside itself; a ``full`` run's baseline is itself), then
    one row per non-full run. ``measured_ms`` is the measured mean time per output token (what
    the prediction is compared with), ``predicted_ms`` the sum of the categories.
    """
    mine = [f"time_ms.{c}" for c in COST_CATEGORIES]
    base = [f"full_time_ms.{c}" for c in COST_CATEGORIES]
    columns = ["model", "timing", "run_id", "mode", "label", "measured_ms", "predicted_ms", *COST_CATEGORIES]
    have = df[pd.to_numeric(df["predicted_tpot_ms"], errors="coerce").notna()]
    rows = []
    for (model, timing), part in have.groupby(["model", "timing"], sort=False, dropna=False):
        baselines = part[part[base].notna().all(axis=1)]
        if not baselines.empty:
            n = len(baselines)
            cats = baselines[base].median().to_numpy()
            label = "full" if n == 1 else f"full (median of {n} baselines)"
            measured = baselines["full_tpot_ms_mean"].median()
            rows.append([model, timing, None, "full", label, measured, cats.sum(), *cats])
        runs = _ordered(part[(part["mode"] != "full") & part[mine].notna().all(axis=1)])
        for _, row in runs.iterrows():
            cats = row[mine].to_numpy(dtype=float)
            rows.append(
                [
                    model,
                    timing,
                    row["run_id"],
                    row["mode"],
                    run_name(row),
                    row["tpot_ms_mean"],
                    cats.sum(),
                    *cats,
                ]
            )
    return pd.DataFrame(rows, columns=columns)


def prediction_points(df: pd.DataFrame) -> pd.DataFrame:
    """Predicted vs measured (mean) time per output token: each run's own point and, for a
    non-full run, its full baseline's (mode ``full``, ``baseline`` True); error = predicted /
    measured − 1, as the runner stores it."""
    columns = ["model", "timing", "run_id", "mode", "baseline", "measured_ms", "predicted_ms", "error"]
    rows = []
    for _, r in df.iterrows():
        own = (r["tpot_ms_mean"], r["predicted_tpot_ms"])
        if np.isfinite(own).all():
            rows.append([r["model"], r["timing"], r["run_id"], r["mode"], False, *own])
        full = (r["full_tpot_ms_mean"], r["full_predicted_tpot_ms"])
        if r["mode"] != "full" and np.isfinite(full).all():
            rows.append([r["model"], r["timing"], r["run_id"], "full", True, *full])
    points = pd.DataFrame([[*row, row[-1] / row[-2] - 1] for row in rows], columns=columns)
    return points.astype({"measured_ms": float, "predicted_ms": float, "error": float})


def speedup_prediction_error(df: pd.DataFrame) -> pd.Series:
    """Predicted speedup / measured speedup − 1, both from mean times per token (NaN for ``full``).

    Why beside the time error: a run's mode and its ``full`` baseline are measured interleaved, so
    a machine that runs 20% slower than when the profile was measured shifts both times alike and
    cancels here; the time error carries that drift, this one only what the model gets wrong.
    """
    measured = pd.to_numeric(df["full_tpot_ms_mean"], errors="coerce") / pd.to_numeric(
        df["tpot_ms_mean"], errors="coerce"
    )
    error = pd.to_numeric(df["predicted_speedup"], errors="coerce") / measured - 1
    return error.where(df["mode"] != "full")


def prediction_error_by_mode(
    points: pd.DataFrame, band: float = PREDICTION_BAND, runs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per model, timing regime and mode: how many points, the median |prediction error| and the
    share within ``band`` (the issue's target: median |error| <= 15% for every mode); with
    `runs`, also the median |speedup prediction error| of each mode's runs."""
    columns = ["model", "timing", "mode", "points", "median_abs_error", "within_band"]
    if points.empty:
        return pd.DataFrame(columns=[*columns, "median_abs_speedup_error"])
    table = (
        points.assign(abs_error=points["error"].abs())
        .groupby(["model", "timing", "mode"], sort=False, dropna=False)["abs_error"]
        .agg(points="size", median_abs_error="median", within_band=lambda e: float((e <= band).mean()))
        .reset_index()
    )
    if runs is not None and not runs.empty:
        speedup = (
            runs.assign(abs_speedup_error=speedup_prediction_error(runs).abs())
            .groupby(["model", "timing", "mode"], sort=False, dropna=False)["abs_speedup_error"]
            .median()
            .rename("median_abs_speedup_error")
        )
        table = table.join(speedup, on=["model", "timing", "mode"])
    else:
        table["median_abs_speedup_error"] = np.nan
    return _ordered(table)[[*columns, "median_abs_speedup_error"]].reset_index(drop=True)
