"""Batched decoding results as tidy frames: one row per run x batch size x workload, the batched
baselines beside them, and when a mode stops paying as the batch grows.

Why a frame of its own: early exit saves layers per token, and at batch size 1 a decode step is
bound by streaming the weights, so skipping layers saves time. As the batch grows each step does
more arithmetic per weight read, and a batch exits only as far as its slowest row allows, so a
method that pays at B = 1 can stop paying at some B. A run with ``bench.batch_size=[1,2,4,8]``
times ``full``, its mode and transformers' batched ``generate`` at each B, interleaved, and records
per B and workload (``overall`` pooled):

- ``metric.batch.<B>.workload.<W>.<field>`` for ``BATCH_FIELDS`` and ``outputs_equal_full``;
- ``metric.batch.<B>.workload.<W>.baseline.<name>.<field>`` for ``BASELINE_FIELDS``;
- ``metric.batch.<B>.trace`` / ``full_trace`` / ``decode_tokens`` / ``full_decode_tokens`` (read by
  ``analysis.project``), and the list ``metric.batch_sizes``.

Records without these fields (every record before batched decoding) give no rows, so a results
set without them draws and summarises exactly what it did before.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import DEFAULT_KV, LOSSLESS_MODES, is_true, unique
from analysis.pareto import mode_group, run_name
from analysis.workloads import (
    BASELINE_RUN_COLUMNS,
    OVERALL,
    REFERENCE_KEYS,
    RUN_COLUMNS,
    WORKLOAD_LIST,
    _flag,
    _json_names,
    _number,
    baseline_label,
    reference_baselines,
    series_name,
    workload_names,
)

log = logging.getLogger(__name__)

BATCH_SIZES = "metric.batch_sizes"  # JSON list of the batch sizes a run timed
# The mode's numbers per B and workload (suffix after ``metric.batch.<B>.workload.<W>.``). The
# prediction fields may be recorded for the first workload only.
BATCH_FIELDS = (
    "throughput_speedup",
    "throughput_speedup_ci_low",
    "throughput_speedup_ci_high",
    "tokens_per_s",
    "full_tokens_per_s",
    "seq_tpot_ms",
    "full_seq_tpot_ms",
    "seq_speedup",
    "seq_speedup_ci_low",
    "seq_speedup_ci_high",
    "flops_ratio",
    "predicted_speedup",
    "prediction_error",
)
# A batched baseline's numbers (suffix after ``...workload.<W>.baseline.<name>.``): the throughput
# speedup and tokens/s always; the per-sequence speedup where the runner records it (NaN if not).
BASELINE_FIELDS = (
    "throughput_speedup",
    "throughput_speedup_ci_low",
    "throughput_speedup_ci_high",
    "tokens_per_s",
    "seq_speedup",
    "seq_speedup_ci_low",
    "seq_speedup_ci_high",
)
# metric.batch.<B>.workload.<W>.<rest>: workload names hold no dots, so <rest> is a field or
# ``baseline.<name>.<field>``.
_WORKLOAD_KEY = re.compile(r"^metric\.batch\.(\d+)\.workload\.([^.]+)\.(.+)$")
_TRACE_KEY = re.compile(r"^metric\.batch\.(\d+)\.trace$")
# One reference per these and the batch size: a batched baseline's speedup is only meaningful
# against full at the same B, on its model, machine, dtype, timing regime and workload.
BATCH_REFERENCE_KEYS = (*REFERENCE_KEYS, "batch_size")


@dataclass(frozen=True)
class BatchLayout:
    """Which (B, workload) pairs and baselines the store's columns hold, found once per frame."""

    pairs: tuple[tuple[int, str], ...]
    baselines: dict[tuple[int, str], tuple[str, ...]] = field(default_factory=dict)


def batch_layout(columns: Iterable[str]) -> BatchLayout:
    """The (B, workload) pairs with batch fields in ``columns``, and the baselines under each."""
    pairs: list[tuple[int, str]] = []
    baselines: dict[tuple[int, str], list[str]] = {}
    for column in columns:
        match = _WORKLOAD_KEY.match(str(column))
        if match is None:
            continue
        key = (int(match.group(1)), match.group(2))
        if key not in pairs:
            pairs.append(key)
        rest = match.group(3)
        if rest.startswith("baseline."):
            name = rest.split(".")[1]
            names = baselines.setdefault(key, [])
            if name not in names:
                names.append(name)
    return BatchLayout(tuple(sorted(pairs)), {k: tuple(v) for k, v in baselines.items()})


def listed_sizes(value: Any) -> list[int]:
    """The batch sizes a record lists (``metric.batch_sizes``, a JSON list); [] when absent."""
    out = []
    for v in _json_names(value, BATCH_SIZES):
        try:
            out.append(int(float(v)))
        except ValueError:
            log.warning("unreadable batch size %r in %s: left out", v, BATCH_SIZES)
    return out


def trace_sizes(columns: Iterable[str]) -> list[int]:
    """The batch sizes with a stored pass trace (``metric.batch.<B>.trace``), ascending."""
    return sorted({int(m.group(1)) for c in columns if (m := _TRACE_KEY.match(str(c)))})


def _positions(rec: pd.Series, workloads: list[str]) -> dict[str, int]:
    """Each workload's place: the run's own order (``metric.workloads``), then any other, and
    ``overall`` last."""
    order = [w for w in workload_names(rec.get(WORKLOAD_LIST)) if w in workloads]
    order += [w for w in workloads if w not in order and w != OVERALL]
    order += [OVERALL] if OVERALL in workloads else []
    return {w: i for i, w in enumerate(order)}


def _kv_named(df: pd.DataFrame) -> bool:
    """Whether lossy runs differ in ``engine.kv``: then each lossy run's label names it."""
    runs = df[~df["mode"].isin(LOSSLESS_MODES)] if "mode" in df else df
    return "kv" in runs and len(unique(runs["kv"])) > 1


def batch_name(rec: pd.Series, name_heads: bool, name_kv: bool) -> str:
    """A run as the other figures name it (``series_name``), with its KV strategy where runs
    differ in it: ``run_name`` leaves the default (fill) unnamed, which beside a ``KV propagate``
    line would read as "no strategy" rather than "fill". Lossless modes accept fill only, so
    their names stay as they are."""
    name = series_name(rec, name_heads)
    kv = rec.get("kv")
    lossy = rec.get("mode") not in LOSSLESS_MODES  # lossless modes run fill only: no need to say
    if name_kv and lossy and (not isinstance(kv, str) or kv == DEFAULT_KV):
        name += f" · KV {DEFAULT_KV}"
    return name


def _recorded(values: dict[str, Any]) -> bool:
    return any(isinstance(v, bool) or (isinstance(v, float) and not math.isnan(v)) for v in values.values())


def batch_frame(df: pd.DataFrame, layout: BatchLayout | None = None) -> pd.DataFrame:
    """One row per run x batch size x workload (``overall`` included) of a tidy frame; empty for
    records without batch fields.

    Columns: the run's ``RUN_COLUMNS``, ``name`` (``batch_name``), ``group`` (``mode_group``),
    ``batch_size``, ``workload``, ``position`` (the run's workload order, ``overall`` last), the
    numbers of ``BATCH_FIELDS`` (NaN where not recorded) and ``outputs_equal_full``.
    """
    layout = layout or batch_layout(df.columns)
    name_heads = "heads" in df and len(unique(df["heads"])) > 1
    name_kv = _kv_named(df)
    workloads = unique(w for _, w in layout.pairs)
    rows = []
    for _, rec in df.iterrows():
        positions = _positions(rec, workloads)
        for size, workload in layout.pairs:
            base = f"metric.batch.{size}.workload.{workload}."
            values: dict[str, Any] = {f: _number(rec.get(base + f)) for f in BATCH_FIELDS}
            values["outputs_equal_full"] = _flag(rec.get(base + "outputs_equal_full"))
            if not _recorded(values):
                continue
            row = {c: rec.get(c) for c in RUN_COLUMNS}
            row.update(name=batch_name(rec, name_heads, name_kv), batch_size=size, workload=workload)
            row.update(position=positions[workload], **values)
            rows.append(row)
    head = [*RUN_COLUMNS, "name", "batch_size", "workload", "position", *BATCH_FIELDS, "outputs_equal_full"]
    frame = pd.DataFrame.from_records(rows, columns=head)
    frame["group"] = mode_group(frame) if rows else pd.Series(dtype=object)
    frame["busy"] = frame["busy"].map(is_true).astype(bool)
    frame["batch_size"] = frame["batch_size"].astype(int)
    return frame


def batch_baseline_frame(df: pd.DataFrame, layout: BatchLayout | None = None) -> pd.DataFrame:
    """One row per run x batch size x workload x batched baseline (transformers' left-padded
    greedy ``generate``, against the run's own full at the same B); empty without them.

    Columns: the run's ``BASELINE_RUN_COLUMNS``, ``run_mode``, ``run_name``, ``batch_size``,
    ``workload``, ``position``, ``baseline``, ``label`` (``baseline_label``), ``BASELINE_FIELDS``
    and ``outputs_equal_full`` (NaN where not recorded).
    """
    layout = layout or batch_layout(df.columns)
    workloads = unique(w for _, w in layout.pairs)
    rows = []
    for _, rec in df.iterrows():
        positions = _positions(rec, workloads)
        for (size, workload), names in layout.baselines.items():
            for name in names:
                base = f"metric.batch.{size}.workload.{workload}.baseline.{name}."
                values: dict[str, Any] = {f: _number(rec.get(base + f)) for f in BASELINE_FIELDS}
                values["outputs_equal_full"] = _flag(rec.get(base + "outputs_equal_full"))
                if not _recorded(values):
                    continue
                row = {c: rec.get(c) for c in BASELINE_RUN_COLUMNS}
                row.update(run_mode=rec.get("mode"), run_name=run_name(rec), batch_size=size)
                row.update(workload=workload, position=positions[workload], baseline=name)
                row.update(label=baseline_label(name), settings_text="", **values)
                rows.append(row)
    head = [*BASELINE_RUN_COLUMNS, "run_mode", "run_name", "batch_size", "workload", "position"]
    head += ["baseline", "label", "settings_text", *BASELINE_FIELDS, "outputs_equal_full"]
    frame = pd.DataFrame.from_records(rows, columns=head)
    frame["busy"] = frame["busy"].map(is_true).astype(bool)
    frame["batch_size"] = frame["batch_size"].astype(int)
    return frame


def batch_references(df: pd.DataFrame) -> pd.DataFrame:
    """One batched-baseline measurement per model, device, dtype, timing, workload, baseline and
    B: the newest steady run's, as ``workloads.reference_baselines`` picks (every batch run
    measures transformers' generate again, so drawing them all would repeat one line per run)."""
    return reference_baselines(batch_baseline_frame(df), BATCH_REFERENCE_KEYS)


def unrecorded_sizes(df: pd.DataFrame, bf: pd.DataFrame) -> dict[str, list[int]]:
    """Per run (by ``batch_name``), the sizes it lists in ``metric.batch_sizes`` but records no
    number for (a batch that did not fit, or a run cut short): said, so that a missing B is not
    read as one that was never asked for."""
    if BATCH_SIZES not in df or bf.empty:
        return {}
    out = {}
    for _, rec in df.iterrows():
        mine = bf[bf["run_id"] == rec["run_id"]]
        missing = sorted(set(listed_sizes(rec[BATCH_SIZES])) - set(mine["batch_size"].astype(int)))
        if missing and not mine.empty:
            out[str(mine["name"].iloc[0])] = missing
        elif missing:
            out[run_name(rec)] = missing
    return out


def batch_workload_order(bf: pd.DataFrame) -> list[str]:
    """Workloads in the runs' order, ``overall`` last, each once."""
    if bf.empty:
        return []
    order = unique(bf.sort_values("position", kind="stable")["workload"])
    return [w for w in order if w != OVERALL] + ([OVERALL] if OVERALL in order else [])


def batch_file_name(workload: str) -> str:
    """``batch_speedup_<workload>``, with anything but letters, digits, _ and - made _."""
    return "batch_speedup_" + re.sub(r"[^A-Za-z0-9_-]", "_", workload)


# ---------------------------------------------------------------- when a mode stops paying


@dataclass(frozen=True)
class Verdict:
    """How one run's speedup on one workload moves with B (from its recorded intervals).

    ``stops_at``: the smallest B whose interval lies wholly below 1 (None: none does);
    ``point_below_at``: the smallest B whose point estimate is below 1 (None: none is);
    ``pays``: the B whose interval lies wholly above 1; ``noise``: those whose interval holds 1;
    ``no_interval``: those without an interval; ``pays_again``: B above ``stops_at`` that pay.
    """

    sizes: tuple[int, ...]
    stops_at: int | None
    point_below_at: int | None
    pays: tuple[int, ...]
    noise: tuple[int, ...]
    no_interval: tuple[int, ...]
    pays_again: tuple[int, ...]

    @property
    def never_pays(self) -> bool:
        """Its interval lies wholly below 1 at every B measured (none unknown)."""
        below = set(self.sizes) - set(self.pays) - set(self.noise) - set(self.no_interval)
        return bool(self.sizes) and below == set(self.sizes)

    @property
    def pays_everywhere(self) -> bool:
        """Its interval lies wholly above 1 at every B measured."""
        return bool(self.sizes) and set(self.pays) == set(self.sizes)


def verdict(
    rows: pd.DataFrame,
    column: str = "throughput_speedup",
) -> Verdict:
    """The ``Verdict`` of one run's rows on one workload (one per B), from ``column`` and its
    ``_ci_low`` / ``_ci_high``. Why the interval and not the point: at a given B the point can sit
    below 1 by noise; "stops paying" should mean the data rule out breaking even."""
    rows = rows[np.isfinite(rows[column].astype(float))].sort_values("batch_size")
    sizes = tuple(int(b) for b in rows["batch_size"])
    point = rows[column].astype(float).to_numpy()
    low = rows[f"{column}_ci_low"].astype(float).to_numpy()
    high = rows[f"{column}_ci_high"].astype(float).to_numpy()
    known = np.isfinite(low) & np.isfinite(high)
    below, above = known & (high < 1.0), known & (low > 1.0)
    stops = next((b for b, flag in zip(sizes, below, strict=True) if flag), None)
    point_below = next((b for b, p in zip(sizes, point, strict=True) if p < 1.0), None)
    pays = tuple(b for b, flag in zip(sizes, above, strict=True) if flag)
    return Verdict(
        sizes=sizes,
        stops_at=stops,
        point_below_at=point_below,
        pays=pays,
        noise=tuple(b for b, k, a, w in zip(sizes, known, above, below, strict=True) if k and not (a or w)),
        no_interval=tuple(b for b, k in zip(sizes, known, strict=True) if not k),
        pays_again=tuple(b for b in pays if stops is not None and b > stops),
    )
