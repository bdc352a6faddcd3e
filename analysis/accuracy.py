"""Standard errors and 95% intervals of lm-eval accuracies and of their deltas against full.

Why: a task scored on a few hundred documents moves by several points between two equally good
models, so an accuracy Δ without an interval invites reading noise as a loss. The interval comes
from lm-eval's own standard error where a record keeps it (``metric.acc.<task>.<metric>_stderr``;
the runner drops those keys today), else from the binomial standard error of the accuracy over
the task's document count (``config.task.limit``, the most documents lm-eval scored), else there
is none and the figure and the summary say so rather than draw a bar of unknown meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import accuracy_columns, is_true

Z95 = 1.959963984540054  # two-sided 95% quantile of the normal distribution
# Per-document 0/1 scores, whose mean has a binomial standard error; f1 is not one of them.
BINOMIAL_METRICS = ("acc", "acc_norm", "exact_match")
LIMIT_COLUMN = "config.task.limit"
SOURCE_STDERR = "lm-eval stderr"
SOURCE_LOSSLESS = "lossless: outputs equal full's"
SOURCE_NONE = "none: no stderr or document count recorded"


@dataclass(frozen=True)
class Interval:
    """A delta's 95% interval and where its standard error came from, in words."""

    low: float
    high: float
    se: float
    source: str


def document_count(row: pd.Series) -> float:
    """The documents a task was scored on, at most: ``task.limit`` when it is a count (>= 1).

    Why "at most": lm-eval scores min(limit, task size) documents, and a fractional limit is a
    share of an unknown size; either way fewer documents would only widen the interval.
    """
    try:
        limit = float(row.get(LIMIT_COLUMN))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return limit if math.isfinite(limit) and limit >= 1 else math.nan


def standard_error(row: pd.Series, prefix: str, suffix: str) -> tuple[float, str]:
    """(standard error, source) of one accuracy ``prefix + suffix`` (``metric.acc.`` or
    ``metric.acc_full.``, ``<task>.<metric>``): lm-eval's where recorded, else binomial."""
    stderr = _finite(row.get(f"{prefix}{suffix}_stderr"))
    if math.isfinite(stderr):
        return stderr, SOURCE_STDERR
    value, n = _finite(row.get(prefix + suffix)), document_count(row)
    metric = suffix.partition(".")[2]
    if metric in BINOMIAL_METRICS and math.isfinite(value) and 0 <= value <= 1 and math.isfinite(n):
        return math.sqrt(value * (1 - value) / n), f"binomial, n ≤ {n:.0f} (`task.limit`)"
    return math.nan, SOURCE_NONE


def reproduces_full(row: pd.Series) -> bool:
    """A lossless mode whose outputs were not found to differ from full's (as ``load.tidy`` rules):
    its Δ is 0 by construction, with no sampling error."""
    equal = row.get("outputs_equal_full")
    return is_true(row.get("lossless")) and not (isinstance(equal, bool | np.bool_) and not equal)


def delta_interval(row: pd.Series, suffix: str) -> Interval:
    """The 95% interval of one task's Δ = mode − full.

    Why the two errors add in quadrature: that is exact for independent samples and too wide
    (conservative) for ours, where both score the same documents; without per-document scores
    the paired covariance is unknown.
    """
    if reproduces_full(row):
        return Interval(0.0, 0.0, 0.0, SOURCE_LOSSLESS)
    delta = _finite(row.get(f"metric.acc_delta.{suffix}"))
    mine, source = standard_error(row, "metric.acc.", suffix)
    full, full_source = standard_error(row, "metric.acc_full.", suffix)
    se = math.hypot(mine, full)
    if not (math.isfinite(se) and math.isfinite(delta)):
        return Interval(math.nan, math.nan, math.nan, SOURCE_NONE)
    words = source if source == full_source else f"{source}; full: {full_source}"
    return Interval(delta - Z95 * se, delta + Z95 * se, se, words)


def mean_delta_se(df: pd.DataFrame) -> pd.Series:
    """Standard error of each run's ``acc_delta`` (the mean Δ over tasks): the tasks' errors in
    quadrature over their count; 0 for a lossless run that reproduced full; NaN where a task has
    no standard error (no bar is better than one that leaves a task out)."""
    chosen = accuracy_columns(df)
    values = []
    for _, row in df.iterrows():
        errors = [delta_interval(row, s).se for s in chosen if pd.notna(row.get(f"metric.acc_delta.{s}"))]
        if reproduces_full(row):
            values.append(0.0)
        elif errors and all(math.isfinite(e) for e in errors):
            values.append(math.sqrt(sum(e * e for e in errors)) / len(errors))
        else:
            values.append(math.nan)
    return pd.Series(values, index=df.index, dtype=float)


def _finite(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan
