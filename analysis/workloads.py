"""Per-workload results as tidy frames: one row per run x generation workload, and the speed-quality
points (with fronts) that the per-workload figures and the summary both read.

Why a frame of its own: a run now times full decoding and its mode side by side on several
generation workloads (held-out text, Python completion, lm-eval generation tasks, LayerSkip's
CNN/DM and XSUM prompts), each with its own speedup, acceptance and quality. Published speedups
differ a lot between tasks (DESIGN.md, "How others benchmark generation"), so a number is only
meaningful beside its workload. Records from before per-workload results carry no
``metric.workloads`` and give no rows; everything else in analysis reads them as before.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import is_true, unique
from analysis.measures import MODE_ORDER
from analysis.pareto import mode_group, pareto_mask, run_name

log = logging.getLogger(__name__)

WORKLOAD_LIST = "metric.workloads"  # JSON list of workload names; the first is the primary one
PREFIX = "metric.workload."
OVERALL = "overall"  # pooled over all workloads' samples: not a workload of its own
# Numbers each workload records (suffix after ``metric.workload.<W>.``).
NUMBER_FIELDS = (
    "prompts",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "decode_speedup",
    "decode_speedup_ci_low",
    "decode_speedup_ci_high",
    "tokens_per_s",
    "full_tokens_per_s",
    "ttft_ms",
    "full_ttft_ms",
    "tpot_ms",
    "full_tpot_ms",
    "timing_samples",
    "acceptance_rate",
    "acceptance_rate_demo",
    "mean_accepted_tokens",
)
TEXT_FIELDS = ("domain", "source", "note")
OVERALL_FIELDS = ("speedup", "speedup_ci_low", "speedup_ci_high", "decode_speedup", "mean_accepted_tokens")
# Per quality metric M: ``metric.workload.<W>.<field>.<M>``; M may hold a comma (lm-eval's filters).
QUALITY_FIELDS = (
    "quality",
    "quality_full",
    "quality_delta",
    "quality_delta_ci_low",
    "quality_delta_ci_high",
    "quality_higher_is_better",
)
# What a run is: carried from the tidy frame onto each of its workload rows.
RUN_COLUMNS = (
    "run_id",
    "model",
    "mode",
    "metric",
    "target",
    "kv",
    "head_choice",
    "heads_kept",
    "heads",
    "head_rank",
    "exit_layer",
    "draft_length",
    "lossless",
    "timing",
    "device",
    "device_name",
    "busy",
    "busy_reason",
)


def workload_names(value: Any) -> list[str]:
    """The workload names a record lists (its ``metric.workloads`` JSON string); [] when absent.

    A malformed value is logged and read as no workloads, so one bad record cannot stop a redraw.
    """
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if not isinstance(value, str) or not value:
        return []
    try:
        parsed = json.loads(value)
    except ValueError:
        log.warning("unreadable %s value %r: read as no workloads", WORKLOAD_LIST, value)
        return []
    return [str(v) for v in parsed] if isinstance(parsed, list) else []


def quality_metrics(columns: list[str], workload: str) -> list[str]:
    """The quality metrics a workload records, in the order the record lists them.

    Why record order: the first is the workload's headline metric (the y axis of its figure).
    """
    prefix = f"{PREFIX}{workload}.quality."
    return [c.removeprefix(prefix) for c in columns if c.startswith(prefix)]


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def series_name(rec: pd.Series, name_heads: bool) -> str:
    """``run_name``, with the heads' architecture added where runs of several architectures are
    shown together (otherwise two runs could share one name in a table)."""
    heads = rec.get("heads")
    named = name_heads and isinstance(heads, str) and rec.get("mode") != "full"  # full runs no head
    return run_name(rec) + (f" · {heads} heads" if named else "")


def _workload_row(
    rec: pd.Series, workload: str, position: int, metrics: list[str], name_heads: bool
) -> dict[str, Any]:
    """One run's results on one workload: its identity, numbers, texts and quality per metric."""
    base = f"{PREFIX}{workload}."
    row: dict[str, Any] = {c: rec.get(c) for c in RUN_COLUMNS}
    name = series_name(rec, name_heads)
    row.update(name=name, workload=workload, position=position, primary=position == 0)
    row.update({f: _number(rec.get(base + f)) for f in NUMBER_FIELDS})
    row.update({f: _text(rec.get(base + f)) for f in TEXT_FIELDS})
    equal = rec.get(base + "outputs_equal_full")
    row["outputs_equal_full"] = bool(equal) if isinstance(equal, bool | np.bool_) else np.nan
    present = [m for m in metrics if pd.notna(rec.get(f"{base}quality.{m}"))]
    row["metrics"] = tuple(present)
    for field in QUALITY_FIELDS:
        for m in present:
            value = rec.get(f"{base}{field}.{m}")
            if field.endswith("better"):  # a flag; NaN where the record does not say
                row[f"{field}.{m}"] = bool(value) if isinstance(value, bool | np.bool_) else np.nan
            else:
                row[f"{field}.{m}"] = _number(value)
    return row


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def workload_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, workload) of a tidy frame (``analysis.load.tidy``); no row for old records.

    Columns: the run's identity (``RUN_COLUMNS``, ``name`` as ``run_name`` writes it, ``group`` as
    ``mode_group`` does), ``workload``, ``position`` (0 = the primary workload), the numbers of
    ``NUMBER_FIELDS``, ``domain`` / ``source`` / ``note``, ``outputs_equal_full``, ``metrics`` (the
    quality metrics recorded, in order) and ``<field>.<metric>`` per ``QUALITY_FIELDS``.
    """
    columns = list(df.columns)
    name_heads = "heads" in df and len(unique(df["heads"])) > 1
    rows = []
    if WORKLOAD_LIST in df:
        for _, rec in df.iterrows():
            for position, workload in enumerate(workload_names(rec[WORKLOAD_LIST])):
                metrics = quality_metrics(columns, workload)
                rows.append(_workload_row(rec, workload, position, metrics, name_heads))
    base = [*RUN_COLUMNS, "name", "workload", "position", "primary", *NUMBER_FIELDS, *TEXT_FIELDS]
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=[*base, "metrics"])
    frame["group"] = mode_group(frame) if rows else pd.Series(dtype=object)
    frame["busy"] = frame["busy"].map(is_true).astype(bool)
    return frame


def overall_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run that records pooled results over all its workloads (``workload.overall``)."""
    base = f"{PREFIX}{OVERALL}."
    rows = []
    for _, rec in df.iterrows():
        values = {f: _number(rec.get(base + f)) for f in OVERALL_FIELDS}
        if workload_names(rec.get(WORKLOAD_LIST)) and not all(math.isnan(v) for v in values.values()):
            rows.append({"run_id": rec.get("run_id"), "mode": rec.get("mode"), **values})
    return pd.DataFrame.from_records(rows, columns=["run_id", "mode", *OVERALL_FIELDS])


def workload_order(wf: pd.DataFrame) -> list[str]:
    """Workloads in the order runs list them (primary ones first), each once."""
    return unique(wf.sort_values("position", kind="stable")["workload"]) if not wf.empty else []


def run_order(wf: pd.DataFrame) -> pd.DataFrame:
    """Rows in reading order: model, timing, mode (full first), then what tells runs apart."""
    keys = ["model", "timing", "_order", "kv", "metric", "target", "exit_layer", "draft_length", "run_id"]
    ordered = wf.assign(_order=wf["mode"].map(MODE_ORDER).fillna(len(MODE_ORDER)))
    return ordered.sort_values(keys, kind="stable", na_position="first").drop(columns="_order")


def workload_info(wf: pd.DataFrame, workload: str) -> dict[str, str]:
    """A workload's domain, prompt count (a range when runs differ), source and note, as text."""
    rows = wf[wf["workload"] == workload]
    prompts = sorted({int(p) for p in rows["prompts"] if np.isfinite(p)})
    count = "? prompts" if not prompts else f"{prompts[0]}" + (f"–{prompts[-1]}" if len(prompts) > 1 else "")
    return {
        "domain": "; ".join(d for d in unique(rows["domain"]) if d) or "domain not recorded",
        "prompts": count if not prompts else f"{count} prompts",
        "source": "; ".join(s for s in unique(rows["source"]) if s),
        "note": "; ".join(n for n in unique(rows["note"]) if n),
    }


def headline_metric(wf: pd.DataFrame, workload: str) -> str | None:
    """The workload's first quality metric that some run recorded (None: speed only)."""
    for metrics in wf.loc[wf["workload"] == workload, "metrics"]:
        if metrics:
            return str(metrics[0])
    return None


def file_name(workload: str) -> str:
    """``speed_quality_<workload>``, with anything but letters, digits, _ and - made _."""
    return "speed_quality_" + re.sub(r"[^A-Za-z0-9_-]", "_", workload)


# ---------------------------------------------------------------- speed-quality points and fronts


def _y(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Quality on the y axis: a lossless run that reproduced full's outputs sits on full's quality.

    Why: such a run produced the very same tokens, so any difference in its recorded score would
    be noise in the scorer, not the method; the same rule ``load.tidy`` applies to accuracy.
    """
    own, full = rows[f"quality.{metric}"].astype(float), rows[f"quality_full.{metric}"].astype(float)
    same = rows["lossless"].eq(True) & rows["outputs_equal_full"].ne(False) & full.notna()
    return own.where(~same, full)


def _full_point(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A full-model point at (1, full's quality) for a panel without a ``full`` run: the median of
    the full baselines every run scored beside itself."""
    quality = rows[f"quality_full.{metric}"].astype(float).median()
    first = rows.iloc[0]
    point = {c: np.nan for c in rows.columns}
    point.update(
        model=first["model"],
        timing=first["timing"],
        device=first["device"],
        mode="full",
        lossless=True,
        busy=False,
        busy_reason="",
        name=f"full (baseline scored beside {len(rows)} run(s))",
        group="full",
        workload=first["workload"],
        run_id=None,
        x=1.0,
        y=quality,
        baseline=True,
    )
    return pd.DataFrame([point])


def speed_quality_points(
    wf: pd.DataFrame, workload: str, metric: str, include_busy: bool = False
) -> pd.DataFrame:
    """The points of a workload's speed-quality figure, one per run plus full, with ``on_front``.

    x: the measured speedup on this workload (full: 1); y: its quality ``metric`` (see ``_y``).
    Fronts are per model and timing regime, over every series at once, maximising speed and
    quality (or minimising quality where the record says lower is better); busy runs are off
    every front and dominate nothing unless ``include_busy``. A panel without a ``full`` run gets
    full's baseline point.
    """
    rows = wf[(wf["workload"] == workload) & wf[f"quality.{metric}"].notna()].copy()
    if rows.empty:
        return rows.assign(x=[], y=[], baseline=[], on_front=[])
    rows["x"] = rows["speedup"].astype(float).where(rows["mode"] != "full", 1.0)
    rows["y"] = _y(rows, metric)
    rows["baseline"] = False
    parts = []
    for _, part in rows.groupby(["model", "timing"], sort=False, dropna=False):
        if not (part["mode"] == "full").any():
            part = pd.concat([part, _full_point(part, metric)], ignore_index=True)
        parts.append(part)
    points = pd.concat(parts, ignore_index=True)
    better = higher_is_better(points, metric)
    points["on_front"] = False
    for _, part in points.groupby(["model", "timing"], sort=False, dropna=False):
        measured = pd.Series(True, index=part.index) if include_busy else ~part["busy"].astype(bool)
        xs, ys = part["x"].where(measured), part["y"].where(measured)
        points.loc[part.index, "on_front"] = pareto_mask(xs, ys, (True, better))
    return points


def higher_is_better(rows: pd.DataFrame, metric: str) -> bool:
    """Whether higher ``metric`` is better: as recorded, True where no run says (scores usually are)."""
    column = f"quality_higher_is_better.{metric}"
    if column not in rows:
        return True
    said = [v for v in rows[column] if isinstance(v, bool | np.bool_)]
    return bool(said[0]) if said else True
