"""Every result record as one tidy DataFrame: short names for the key fields, every other column kept.

Why a tidy layer: the store's flat ``config.*`` / ``metric.*`` names are exact but long, and the
fronts, figures and summary all need the same few fields under the same rules (lossless modes lose
no accuracy, a null LayerSkip exit layer means the deepest head, which accuracy number is "the"
accuracy). Stating those rules once here keeps the three consumers consistent. Reading and
parsing the store is ``earlyexit.harness.results``' job; this module only reshapes what it returns.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earlyexit.harness.results import SCHEMA_VERSION, EmptyResultsError, ResultStore

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("results/records.jsonl")

# Modes whose output equals the full model's, token for token (greedy). Mirrors
# earlyexit.decoding.LOSSLESS (a test checks they agree); copied so that drawing figures does not
# import torch and transformers.
LOSSLESS_MODES = ("full", "layerskip", "dssd", "del")
# What an exited token leaves in deeper layers' KV cache. Records from before the setting have no
# column and ran the only strategy there was; lossless modes accept only this one.
DEFAULT_KV = "fill"
DEFAULT_HEAD_CHOICE = "all"  # calibration.heads before the key existed: every head
# Modes whose exits depend on a confidence metric and a calibrated target.
THRESHOLD_MODES = ("early-exit", "dssd")
# Where a token's predicted time goes. Mirrors earlyexit.measure.cost_model.CATEGORIES (a test
# checks they agree), copied for the same reason as LOSSLESS_MODES.
COST_CATEGORIES = (
    "layers_full",
    "layers_draft",
    "layers_verify",
    "layers_fill",
    "kv_projections",
    "head_matmuls",
    "exit_decisions",
    "unembedding",
    "pass_fixed",
)

# Short name -> store column. A column missing from the store becomes all-NaN, so that code
# downstream can rely on every short name existing, whatever subset of runs was stored.
KEY_COLUMNS: dict[str, str] = {
    "model": "config.model.name",
    "mode": "config.mode.name",
    # What happens to an exited token's deeper K/V (early-exit only): fill, propagate or skip.
    "kv": "config.engine.kv",
    # Which calibrated heads run: all, or priced (those that lower this device's priced time).
    "head_choice": "config.calibration.heads",
    "metric": "config.metric.name",
    "target": "config.calibration.target",
    "exit_layer": "config.mode.exit_layer",
    "draft_length": "config.mode.draft_length",
    "max_draft": "config.mode.max_draft",
    "heads": "config.heads.architecture",
    "heads_kept": "metric.heads_kept",  # early-exit and dssd: the heads that could fire
    "tasks": "config.task.names",
    "head_rank": "config.heads.rank",
    "speedup": "metric.speedup",
    # The speedup's paired bootstrap 95% interval; within_noise: the interval contains 1.0.
    "speedup_ci_low": "metric.speedup_ci_low",
    "speedup_ci_high": "metric.speedup_ci_high",
    "within_noise": "metric.within_noise",
    "timing_samples": "metric.timing_samples",
    "flops_saved": "metric.flops_saved",
    "flops_ratio": "metric.flops_ratio",
    "acceptance_rate": "metric.acceptance_rate",  # head drafts only
    # Full-model tokens counted as accepted drafts, as the public DSSD demo counts (DESIGN.md).
    "acceptance_rate_demo": "metric.acceptance_rate_demo",
    "full_model_drafts": "metric.full_model_drafts",
    "tpot_ms": "metric.tpot_ms",
    "full_tpot_ms": "metric.full_tpot_ms",
    # Mean time per output token (what the cost model predicts) and the prediction beside it.
    "tpot_ms_mean": "metric.tpot_ms_mean",
    "full_tpot_ms_mean": "metric.full_tpot_ms_mean",
    "predicted_tpot_ms": "metric.predicted_tpot_ms",
    "prediction_error": "metric.prediction_error",
    "full_predicted_tpot_ms": "metric.full_predicted_tpot_ms",
    "full_prediction_error": "metric.full_prediction_error",
    "predicted_speedup": "metric.predicted_speedup",
    "decode_tokens": "metric.decode_tokens",
    "full_decode_tokens": "metric.full_decode_tokens",
    "trace": "metric.trace",
    "full_trace": "metric.full_trace",
    "profile_key": "metric.profile_key",
    # interleaved (timed between the run's own samples, stored whole in "profile") or cached.
    "profile_source": "metric.profile_source",
    "profile": "metric.profile",
    "model_shape": "metric.model_shape",
    "layers_per_token": "metric.layers_per_token",
    "exit_share": "metric.heldout_early_exit_share",
    "agreement": "metric.heldout_agreement_at_target",
    "outputs_equal_full": "metric.outputs_equal_full",
    "device": "env.device",
    "device_name": "env.device_name",
    "dtype": "env.dtype",
    "cuda_graphs": "config.bench.cuda_graphs",
    # The machine's load while the run was timed: a busy machine's timings are unreliable.
    "machine_busy": "metric.machine_busy",
    "machine_busy_reason": "metric.machine_busy_reason",
    "load_avg_start": "metric.load_avg_start",  # 1-minute load average
    "load_avg_end": "metric.load_avg_end",
    "cpu_steal_share": "metric.cpu_steal_share",
    "full_tpot_spread": "metric.full_tpot_spread",  # max / min of full's repeated per-token times
    "profile_inconsistent": "metric.profile_inconsistent",  # the cost profile had negative ratios
    # Predicted ms per output token in each cost category, of the mode and of its full baseline.
    **{f"time_ms.{c}": f"metric.time_ms.{c}" for c in COST_CATEGORIES},
    **{f"full_time_ms.{c}": f"metric.full_time_ms.{c}" for c in COST_CATEGORIES},
}
# Columns that are numbers whenever present (NaN for records that predate them).
NUMERIC_COLUMNS = (
    "target",
    "exit_layer",
    "draft_length",
    "max_draft",
    "speedup",
    "flops_saved",
    "acceptance_rate",
    "acceptance_rate_demo",
    "layers_per_token",
    "speedup_ci_low",
    "speedup_ci_high",
    "timing_samples",
    "tpot_ms",
    "full_tpot_ms",
    "tpot_ms_mean",
    "full_tpot_ms_mean",
    "predicted_tpot_ms",
    "prediction_error",
    "full_predicted_tpot_ms",
    "full_prediction_error",
    "predicted_speedup",
    "decode_tokens",
    "full_decode_tokens",
    "load_avg_start",
    "load_avg_end",
    "cpu_steal_share",
    "full_tpot_spread",
    *(f"time_ms.{c}" for c in COST_CATEGORIES),
    *(f"full_time_ms.{c}" for c in COST_CATEGORIES),
)
META_COLUMNS = ("run_id", "config_key", "status", "created_at", "source")
# The accuracy number of a task, in order of preference. Perplexities are left out on purpose:
# lower is better there, so averaging them with accuracies would mix directions.
ACCURACY_PREFERENCE = ("acc", "acc_norm", "exact_match", "f1")
_DELTA_PREFIX = "metric.acc_delta."


def load_results(
    path: str | Path | None = DEFAULT_STORE,
    wandb_project: str | None = None,
    include_failed: bool = False,
) -> pd.DataFrame:
    """All records from the local store and/or a W&B project ("entity/project"), tidied.

    Raises ``EmptyResultsError`` (naming the path) when nothing loadable is found, or when only
    failed runs are and ``include_failed`` is False.
    """
    frames = []
    if path is not None:
        try:
            local = ResultStore(path).load()
        except EmptyResultsError:
            if wandb_project is None:
                raise
            log.warning("no local results at %s; using W&B project %s only", path, wandb_project)
        else:
            frames.append(local.assign(source=str(path)))
    if wandb_project is not None:
        frames.append(load_wandb(wandb_project))
    frames = [f for f in frames if not f.empty]
    if not frames:
        raise EmptyResultsError(f"no result records found in {path} or W&B project {wandb_project}")
    raw = pd.concat(frames, ignore_index=True).drop_duplicates("run_id", keep="first")
    if not include_failed:
        failed = int((raw["status"] != "ok").sum())
        raw = raw[raw["status"] == "ok"]
        if raw.empty:
            raise EmptyResultsError(f"{path}: all {failed} record(s) are failed runs; nothing to analyse")
        if failed:
            log.info("left out %d failed run(s) (include_failed=True keeps them)", failed)
    return tidy(raw)


def load_wandb(project: str, filters: dict | None = None) -> pd.DataFrame:
    """Records rebuilt from W&B runs logged by ``earlyexit.harness.loggers`` (config = flat config,
    summary = scalar metrics + status/run_id/config_key). Per-head tables stay in W&B."""
    import wandb  # optional and slow to import: only when asked for

    rows = []
    for run in wandb.Api().runs(project, filters=filters):
        summary = dict(run.summary)
        record: dict[str, Any] = {
            "run_id": summary.get("run_id", run.id),
            "config_key": summary.get("config_key"),
            "status": summary.get("status", "ok" if run.state == "finished" else "failed"),
            "error": summary.get("error"),
            "created_at": pd.to_datetime(run.created_at, utc=True),
            "source": f"wandb:{project}",
            "per_head": None,
        }
        record.update({f"config.{k}": v for k, v in _flat(dict(run.config)).items()})
        skip = {"run_id", "config_key", "status", "error", "traceback"}
        record.update(
            {
                f"metric.{k}": v
                for k, v in summary.items()
                if not k.startswith("_") and k not in skip and isinstance(v, int | float | bool)
            }
        )
        rows.append(record)
    return pd.DataFrame.from_records(rows)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """Short key columns first (from ``KEY_COLUMNS``), derived columns, then every other column."""
    df = raw.rename(columns={v: k for k, v in KEY_COLUMNS.items() if v in raw.columns}).copy()
    for name in (*KEY_COLUMNS, *META_COLUMNS):
        if name not in df:
            df[name] = np.nan
    for name in NUMERIC_COLUMNS:
        df[name] = pd.to_numeric(df[name], errors="coerce")
    # True / False where measured; NaN (not False) for records from before the timing protocol.
    df["within_noise"] = df["within_noise"].map(lambda v: v if isinstance(v, bool | np.bool_) else np.nan)
    df["lossless"] = df["mode"].isin(LOSSLESS_MODES)
    df["kv"] = kv_strategy(df)
    df["head_choice"] = head_choice(df)
    # Eager and CUDA-graph latencies are different regimes: fronts and panels keep them apart.
    df["timing"] = np.where(df["cuda_graphs"].eq(True), "CUDA graphs", "eager")
    # These describe the calibrated thresholds, which modes without a confidence threshold never use
    # (the runner still records them at the config's defaults).
    unused = ["metric", "target", "exit_share", "agreement"]
    df.loc[~df["mode"].isin(THRESHOLD_MODES), unused] = np.nan
    df["exit_layer"] = _exit_layers(df)
    acc = accuracy_columns(df)
    df["acc"] = _mean(df, acc, "metric.acc.")
    df["acc_full"] = _mean(df, acc, "metric.acc_full.")
    df["acc_delta"] = _mean(df, acc, _DELTA_PREFIX)
    reproduces_full = df["lossless"] & (df["outputs_equal_full"] != False)  # noqa: E712 (NaN = not checked)
    broken = df["lossless"] & ~reproduces_full
    if broken.any():
        log.warning("%d lossless run(s) did not reproduce the full model's output", int(broken.sum()))
    df.loc[reproduces_full & df["acc_delta"].isna(), "acc_delta"] = 0.0
    # Teacher-forced held-out agreement with the final layer, minus 1: an accuracy proxy that every
    # run has, even without an lm-eval task.
    df["agreement_delta"] = np.where(reproduces_full, 0.0, pd.to_numeric(df["agreement"]) - 1.0)
    df.loc[broken, "agreement_delta"] = np.nan
    df["busy"] = busy_flags(df)
    df["busy_reason"] = busy_reasons(df)
    derived = ["timing", "lossless", "acc", "acc_full", "acc_delta", "agreement_delta", "busy", "busy_reason"]
    front = [*META_COLUMNS, *KEY_COLUMNS, *derived]
    return df[front + [c for c in df.columns if c not in front]].reset_index(drop=True)


def busy_flags(df: pd.DataFrame) -> pd.Series:
    """True for a run timed on a busy machine or priced by a profile with negative ratios.

    Why one flag: either way its speed is not a measurement of the method, so fronts leave it out
    and figures draw it apart. Records from before the load check carry neither key: False.
    """
    flags = pd.Series(False, index=df.index)
    for column in ("machine_busy", "profile_inconsistent"):
        if column in df:
            flags |= df[column].map(is_true)
    return flags


def is_true(value: Any) -> bool:
    """A stored flag that is True (a Python or numpy bool); NaN, None and text are not."""
    return isinstance(value, bool | np.bool_) and bool(value)


def busy_reasons(df: pd.DataFrame) -> pd.Series:
    """Why each busy run is flagged, in words (the runner's reason, the profile's); "" otherwise."""
    reasons = []
    for i in df.index:
        parts = []
        if is_true(df.at[i, "machine_busy"]):
            text = df.at[i, "machine_busy_reason"]
            parts.append(str(text) if isinstance(text, str) and text else "machine busy")
        if is_true(df.at[i, "profile_inconsistent"]):
            parts.append("cost profile had negative ratios")
        reasons.append("; ".join(parts))
    return pd.Series(reasons, index=df.index, dtype=object)


@dataclass(frozen=True)
class StoreCounts:
    """What a store held beside the runs analysed: why a reader should know how many were left out."""

    lines: int  # non-blank lines
    ok: int
    failed: int  # status "failed": no numbers to show
    unreadable: tuple[int, ...]  # line numbers that are not a JSON object (a writer killed mid-line)
    unknown_schema: int  # records of a schema this code does not know (dropped by ResultStore.load)
    repeats: int = 0  # older runs of a repeated config, left out by latest_per_config


def count_store(path: str | Path) -> StoreCounts:
    """Count a store's lines by what ``ResultStore.load`` and ``load_results`` do with them.

    Read here, line by line, because ``load`` only warns about the lines it skips and
    ``load_results`` drops failed runs: the summary must still say how many there were.
    """
    counts = {"ok": 0, "failed": 0, "unknown": 0}
    unreadable, lines = [], 0
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            lines += 1
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                unreadable.append(lineno)
                continue
            version = record.get("schema_version")
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                counts["unknown"] += 1
            else:
                counts["ok" if record.get("status") == "ok" else "failed"] += 1
    return StoreCounts(lines, counts["ok"], counts["failed"], tuple(unreadable), counts["unknown"])


def kv_strategy(df: pd.DataFrame) -> pd.Series:
    """Each run's KV strategy, ``fill`` where the record (or a frame built by hand) has none."""
    if "kv" not in df:
        return pd.Series(DEFAULT_KV, index=df.index, dtype=object)
    return df["kv"].astype(object).where(df["kv"].notna(), DEFAULT_KV)


def head_choice(df: pd.DataFrame) -> pd.Series:
    """Each run's ``calibration.heads``, ``all`` where the record (or a hand-built frame) has none."""
    if "head_choice" not in df:
        return pd.Series(DEFAULT_HEAD_CHOICE, index=df.index, dtype=object)
    return df["head_choice"].astype(object).where(df["head_choice"].notna(), DEFAULT_HEAD_CHOICE)


def accuracy_columns(df: pd.DataFrame) -> list[str]:
    """The preferred accuracy metric of each task, as ``<task>.<metric>`` suffixes."""
    by_task: dict[str, set[str]] = {}
    for column in df.columns:
        if column.startswith(_DELTA_PREFIX):
            task, _, name = column.removeprefix(_DELTA_PREFIX).partition(".")
            by_task.setdefault(task, set()).add(name)
    chosen = []
    for task, names in sorted(by_task.items()):
        best = next((n for n in ACCURACY_PREFERENCE if n in names), None)
        if best is not None:
            chosen.append(f"{task}.{best}")
    return chosen


def _mean(df: pd.DataFrame, suffixes: list[str], prefix: str) -> pd.Series:
    columns = [prefix + s for s in suffixes if prefix + s in df]
    if not columns:
        return pd.Series(np.nan, index=df.index)
    return df[columns].apply(pd.to_numeric, errors="coerce").mean(axis=1, skipna=True)


def _exit_layers(df: pd.DataFrame) -> pd.Series:
    """LayerSkip's configured exit layer, or the deepest head when it was left null (the default)."""
    layers = df["exit_layer"].copy()
    missing = (df["mode"] == "layerskip") & layers.isna()
    for i in df.index[missing]:
        heads = head_layers(df.at[i, "per_head"] if "per_head" in df else None)
        if heads:
            layers.at[i] = max(heads)
    return layers


def head_layers(per_head: Any) -> list[int]:
    """Head layers of one record, from its ``per_head`` JSON string ([] if absent)."""
    return sorted(int(k) for k in _json(per_head))


def _json(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        parsed = json.loads(value)
        return parsed if isinstance(parsed, dict) else {}
    return {}


def latest_per_config(df: pd.DataFrame) -> pd.DataFrame:
    """One row per config: the newest run (``force=true`` re-runs would otherwise count twice)."""
    if df["config_key"].isna().all():
        return df
    ordered = df.sort_values("created_at", kind="stable", na_position="first")
    keep = ordered.drop_duplicates("config_key", keep="last").sort_index()
    if len(keep) < len(df):
        log.info("kept the newest of %d repeated run(s) of the same config", len(df) - len(keep))
    return keep


ID_COLUMNS = (
    "run_id",
    "model",
    "heads",
    "head_choice",
    "mode",
    "kv",
    "metric",
    "target",
    "exit_layer",
    "draft_length",
    "max_draft",  # DEL's only setting among these: its run label needs it
)


def per_head_table(df: pd.DataFrame) -> pd.DataFrame:
    """Long table, one row per (run, head): threshold, agreement, AUROCs, held-out exits..."""
    rows = []
    for _, rec in df.iterrows():
        for layer, stats in _json(rec.get("per_head")).items():
            rows.append({**{c: rec.get(c) for c in ID_COLUMNS}, "layer": int(layer), **stats})
    columns = [*ID_COLUMNS, "layer"]
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=columns)


def exit_histogram_table(df: pd.DataFrame) -> pd.DataFrame:
    """Long table, one row per (run, exit layer) seen in decoding: count and share of tokens."""
    rows = []
    for _, rec in df.iterrows():
        hist = {int(k): int(v) for k, v in _json(rec.get("metric.exit_histogram")).items()}
        total = sum(hist.values())
        heads = set(head_layers(rec.get("per_head")))
        for layer, count in sorted(hist.items()):
            share = count / total if total else math.nan
            final = bool(heads) and layer not in heads
            ids = {c: rec.get(c) for c in ID_COLUMNS}
            rows.append({**ids, "layer": layer, "count": count, "share": share, "final": final})
    columns = [*ID_COLUMNS, "layer", "count", "share", "final"]
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=columns)


def unique(values: Iterable) -> list:
    """Distinct non-null values in first-seen order (group keys for panels and series)."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v in out:
            continue
        out.append(v)
    return out
