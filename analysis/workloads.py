"""Per-workload results as tidy frames: one row per run x generation workload, and the speed-quality
points (with fronts) that the per-workload figures and the summary both read.

Why a frame of its own: a run now times full decoding and its mode side by side on several
generation workloads (held-out text, Python completion, lm-eval generation tasks, LayerSkip's
CNN/DM and XSUM prompts), each with its own speedup, acceptance and quality. Published speedups
differ a lot between tasks (DESIGN.md, "How others benchmark generation"), so a number is only
meaningful beside its workload. Records from before per-workload results carry no
``metric.workloads`` and give no rows; everything else in analysis reads them as before.

Baselines (``metric.baselines``: transformers' greedy ``generate``, draft-model ``assisted``
decoding, ``prompt_lookup``, transformers' own LayerSkip ``hf_early_exit``) are timed in the same
protocol beside ``full`` and the mode, on the same prompts, each against the run's own ``full``.
They get a frame of their own (``baseline_frame``), one row per run x workload x baseline, and one
reference per model, device, dtype, timing regime, workload and baseline
(``reference_baselines``): what a user would pick instead of our modes, drawn and tabled beside
them but never on their fronts. Records without ``metric.baselines`` give no baseline rows.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
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
    # Decode FLOPs per token over full's; NaN in records from before it was recorded.
    "flops_ratio",
    # Where outputs part from full's (only when they do): how many prompts differ, the first
    # differing prompt and output position, and full's top-1 minus top-2 logit there.
    "prompts_differing",
    "first_divergence_prompt",
    "first_divergence_position",
    "divergence_margin",
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
    "max_draft",
    "lossless",
    "timing",
    "device",
    "device_name",
    "dtype",
    "busy",
    "busy_reason",
)


def _json_names(value: Any, key: str) -> list[str]:
    """A JSON list of names as a record stores it; [] when absent, and (logged) when malformed,
    so one bad record cannot stop a redraw."""
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if not isinstance(value, str) or not value:
        return []
    try:
        parsed = json.loads(value)
    except ValueError:
        log.warning("unreadable %s value %r: read as none", key, value)
        return []
    return [str(v) for v in parsed] if isinstance(parsed, list) else []


def workload_names(value: Any) -> list[str]:
    """The workload names a record lists (its ``metric.workloads`` JSON string); [] when absent."""
    return _json_names(value, WORKLOAD_LIST)


def quality_metrics(columns: list[str], workload: str, baseline: str | None = None) -> list[str]:
    """The quality metrics a workload records for the mode (or for ``baseline``), in record order.

    Why record order: the first is the workload's headline metric (the y axis of its figure).
    The mode's prefix ``metric.workload.<W>.quality.`` never matches a baseline's keys
    (``metric.workload.<W>.baseline.<B>.quality.<M>``): workload names hold no dots.
    """
    prefix = f"{PREFIX}{workload}." + (f"baseline.{baseline}." if baseline else "") + "quality."
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


def _measured(rec: pd.Series, base: str, metrics: list[str]) -> dict[str, Any]:
    """The numbers, equality with full and quality per metric stored under ``base`` (a workload's
    prefix, or a baseline's within it): the mode and its baselines record the same fields."""
    row: dict[str, Any] = {f: _number(rec.get(base + f)) for f in NUMBER_FIELDS}
    row["outputs_equal_full"] = _flag(rec.get(base + "outputs_equal_full"))
    present = [m for m in metrics if pd.notna(rec.get(f"{base}quality.{m}"))]
    row["metrics"] = tuple(present)
    for field in QUALITY_FIELDS:
        for m in present:
            value = rec.get(f"{base}{field}.{m}")
            # the direction is a flag; NaN where the record does not say
            row[f"{field}.{m}"] = _flag(value) if field.endswith("better") else _number(value)
    return row


def _flag(value: Any) -> bool | float:
    """A stored True / False; NaN where the record has none (not checked, or an older record)."""
    return bool(value) if isinstance(value, bool | np.bool_) else np.nan


def _workload_row(
    rec: pd.Series, workload: str, position: int, metrics: list[str], name_heads: bool
) -> dict[str, Any]:
    """One run's results on one workload: its identity, numbers, texts and quality per metric."""
    base = f"{PREFIX}{workload}."
    row: dict[str, Any] = {c: rec.get(c) for c in RUN_COLUMNS}
    name = series_name(rec, name_heads)
    row.update(name=name, workload=workload, position=position, primary=position == 0)
    row.update({f: _text(rec.get(base + f)) for f in TEXT_FIELDS})
    row.update(_measured(rec, base, metrics))
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


# ---------------------------------------------------------------- baselines timed beside the mode

BASELINE_LIST = "metric.baselines"  # JSON list of the baselines a run timed, in its lineup order
# Known baselines in reading order: the plain reference first, then the speculative alternatives.
BASELINE_ORDER = {"hf_generate": 0, "assisted": 1, "prompt_lookup": 2, "hf_early_exit": 3}
# What a baseline row carries of its run: enough to tell runs, machines and regimes apart.
# The run's own mode goes in ``run_mode``: a baseline row is not the mode's (nor full's) result.
BASELINE_RUN_COLUMNS = (
    "run_id",
    "created_at",
    "model",
    "device",
    "device_name",
    "dtype",
    "timing",
    "busy",
    "busy_reason",
)
# One reference per these: a speedup is only meaningful on its model, machine, dtype, timing
# regime (full's time per token, the denominator, differs between eager and CUDA graphs) and workload.
REFERENCE_KEYS = ("model", "device", "device_name", "dtype", "timing", "workload", "baseline")
OVERALL_BASELINE_FIELDS = (*OVERALL_FIELDS, "timing_samples")


def baseline_names(value: Any) -> list[str]:
    """The baselines a record lists (its ``metric.baselines`` JSON string); [] when absent (older
    records timed none)."""
    return _json_names(value, BASELINE_LIST)


def baseline_settings(value: Any) -> dict[str, Any]:
    """A baseline's settings (``metric.baseline.<B>.settings``, a JSON object string); {} when
    absent or unreadable, so a label falls back to the bare name rather than stopping a redraw."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        log.warning("unreadable baseline settings %r: read as none", value)
        return {}
    return parsed if isinstance(parsed, dict) else {}


def baseline_label(name: str, settings: dict[str, Any] | None = None) -> str:
    """A baseline in words, as tables, legends and sentences name it: what it is, not its key.

    The draft model is named for ``assisted`` (its speedup depends on it more than on anything
    else), and the exit layer for transformers' LayerSkip where the settings record one.
    """
    settings = settings or {}
    if name == "hf_generate":
        return "hf_generate (transformers)"
    if name == "assisted":
        return f"assisted (draft: {settings.get('draft_model') or '?'})"
    if name == "prompt_lookup":
        return "prompt lookup"
    if name == "hf_early_exit":
        layer = next((settings[k] for k in ("assistant_early_exit", "exit_layer") if k in settings), None)
        return "transformers LayerSkip" + (f" E={layer}" if layer is not None else "")
    return name


def _settings_text(settings: dict[str, Any]) -> str:
    """Settings as canonical JSON: equal settings compare equal however the record ordered them."""
    return json.dumps(settings, sort_keys=True, default=str)


def baseline_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run x workload x baseline of a tidy frame; empty for records without baselines.

    Columns: the run's ``BASELINE_RUN_COLUMNS``, ``run_mode`` and ``run_name`` (the run's own mode
    and name: no ``mode`` column, so no rule for the mode's or full's rows applies by mistake),
    ``workload``, ``position`` (the workload's place in the run's list), ``baseline`` (its key),
    ``label`` (``baseline_label``), ``settings`` (dict) and ``settings_text``, the numbers of
    ``NUMBER_FIELDS``, ``outputs_equal_full``, ``metrics`` and ``<field>.<metric>`` per
    ``QUALITY_FIELDS``, all read from ``metric.workload.<W>.baseline.<B>.*`` (no row where
    none of them is recorded).
    """
    columns = list(df.columns)
    rows = []
    if BASELINE_LIST in df:
        for _, rec in df.iterrows():
            names = baseline_names(rec[BASELINE_LIST])
            if not names:
                continue
            run = {c: rec.get(c) for c in BASELINE_RUN_COLUMNS}
            run.update(run_mode=rec.get("mode"), run_name=run_name(rec))
            for position, workload in enumerate(workload_names(rec.get(WORKLOAD_LIST))):
                for name in names:
                    settings = baseline_settings(rec.get(f"metric.baseline.{name}.settings"))
                    base = f"{PREFIX}{workload}.baseline.{name}."
                    metrics = quality_metrics(columns, workload, name)
                    row = {**run, "workload": workload, "position": position, "baseline": name}
                    row.update(label=baseline_label(name, settings), settings=settings)
                    row["settings_text"] = _settings_text(settings)
                    measured = _measured(rec, base, metrics)
                    if _recorded(measured):  # a workload the baseline has no fields for gives no row
                        rows.append({**row, **measured})
    head = [*BASELINE_RUN_COLUMNS, "run_mode", "run_name", "workload", "position", "baseline", "label"]
    head.append("settings")
    empty = [*head, "settings_text", *NUMBER_FIELDS, "outputs_equal_full", "metrics"]
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=empty)
    frame["busy"] = frame["busy"].map(is_true).astype(bool)
    return frame


def _recorded(measured: dict[str, Any]) -> bool:
    """Whether any number, equality or quality was recorded (else the row would only be NaNs,
    and as the newest it could hide an older real measurement)."""
    numbers = [measured[f] for f in NUMBER_FIELDS]
    return (
        bool(measured["metrics"])
        or pd.notna(measured["outputs_equal_full"])
        or any(not math.isnan(v) for v in numbers)
    )


def baseline_overall_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run x baseline with pooled results over all its workloads
    (``metric.workload.overall.baseline.<B>.*``), with the run's ``BASELINE_RUN_COLUMNS``."""
    rows = []
    if BASELINE_LIST in df:
        for _, rec in df.iterrows():
            for name in baseline_names(rec[BASELINE_LIST]):
                base = f"{PREFIX}{OVERALL}.baseline.{name}."
                values = {f: _number(rec.get(base + f)) for f in OVERALL_BASELINE_FIELDS}
                if all(math.isnan(v) for v in values.values()):
                    continue
                settings = baseline_settings(rec.get(f"metric.baseline.{name}.settings"))
                row = {c: rec.get(c) for c in BASELINE_RUN_COLUMNS}
                row.update(run_mode=rec.get("mode"), run_name=run_name(rec), workload=OVERALL, baseline=name)
                row.update(label=baseline_label(name, settings), settings_text=_settings_text(settings))
                row.update(values, outputs_equal_full=_flag(rec.get(base + "outputs_equal_full")))
                rows.append(row)
    head = [*BASELINE_RUN_COLUMNS, "run_mode", "run_name", "workload", "baseline", "label", "settings_text"]
    frame = pd.DataFrame.from_records(rows, columns=[*head, *OVERALL_BASELINE_FIELDS, "outputs_equal_full"])
    frame["busy"] = frame["busy"].map(is_true).astype(bool)
    return frame


def reference_baselines(rows: pd.DataFrame, keys: Sequence[str] = REFERENCE_KEYS) -> pd.DataFrame:
    """One measurement per ``keys`` (default: model, device, dtype, timing, workload, baseline):
    the newest run's off a busy machine, or the newest busy one where every run was busy.

    Why one, and why that one: every run that lists a baseline measures it again, each against
    its own ``full``, so a figure or table showing them all would repeat one alternative many
    times. Busy runs' timings are not a measurement, so they are picked only when nothing else
    measured it (and stay flagged ``busy``). Among steady runs the newest reflects the code,
    library versions and settings now in use; taking the fastest instead would pick the upside of
    the noise (the maximum of several noisy estimates is biased high), and a median would blend
    runs that may have differed in settings. Columns added: ``runs_measured`` (how many runs
    measured it), ``busy_runs`` (how many of those were busy) and ``settings_vary`` (whether their
    settings differed, e.g. another draft model).
    """
    if rows.empty:
        return rows.assign(
            runs_measured=pd.Series(dtype=int), busy_runs=pd.Series(dtype=int), settings_vary=[]
        )
    keys = [k for k in keys if k in rows]
    when = pd.to_datetime(rows["created_at"], utc=True, errors="coerce") if "created_at" in rows else None
    ordered = rows.assign(
        _steady=~rows["busy"].astype(bool),
        _when=when if when is not None else pd.NaT,
        _seq=np.arange(len(rows)),  # the store's order breaks ties: a later line was written later
    ).sort_values(["_steady", "_when", "_seq"], kind="stable", na_position="first")
    groups = ordered.groupby(keys, sort=False, dropna=False)
    ordered["runs_measured"] = groups["run_id"].transform("nunique").astype(int)
    ordered["busy_runs"] = groups["busy"].transform("sum").astype(int)
    texts = ordered["settings_text"] if "settings_text" in ordered else pd.Series("", index=ordered.index)
    ordered["settings_vary"] = (
        texts.groupby([ordered[k] for k in keys], dropna=False).transform("nunique") > 1
    )
    picked = ordered.groupby(keys, sort=False, dropna=False).tail(1).sort_values("_seq", kind="stable")
    return picked.drop(columns=["_steady", "_when", "_seq"]).reset_index(drop=True)


def baseline_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Baseline rows in reading order: model, device, timing, then the baselines' own order."""
    ordered = rows.assign(_order=rows["baseline"].map(BASELINE_ORDER).fillna(len(BASELINE_ORDER)))
    keys = ["model", "device", "timing", "_order", "baseline", "label"]
    return ordered.sort_values(keys, kind="stable", na_position="first").drop(columns="_order")


def reference_points(refs: pd.DataFrame, workload: str, metric: str) -> pd.DataFrame:
    """The chosen baselines of one workload as points of its speed-quality figure: x = speedup,
    y = quality ``metric`` (full's where the outputs equal full's, as ``_y`` rules for lossless
    runs: the very same tokens). Only those with a speedup and a score on ``metric``; no
    ``on_front``: they are references, never part of our modes' fronts."""
    column = f"quality.{metric}"
    if refs.empty or column not in refs:
        return refs.iloc[:0].assign(x=[], y=[])
    speed = refs["speedup"].astype(float)
    rows = refs[(refs["workload"] == workload) & refs[column].notna() & np.isfinite(speed)].copy()
    own, full = rows[column].astype(float), rows[f"quality_full.{metric}"].astype(float)
    same = rows["outputs_equal_full"].eq(True) & full.notna()
    return rows.assign(x=rows["speedup"].astype(float), y=own.where(~same, full))


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
