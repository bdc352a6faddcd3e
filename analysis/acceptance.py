"""Which DSSD and LayerSkip runs may be set side by side for the DSSD / LayerSkip acceptance ratio.

Why a rule of its own: the DSSD paper's ratio compares DSSD with a tuned LayerSkip baseline on the
same model and the same trained heads, under one definition of acceptance. A best-of-everything
ratio across head architectures, workloads or definitions compares unlike things, and a DSSD run
that kept a single head has no exit to choose between, so it is not the multi-head method the
published ratio measures (with ``calibration.heads=priced`` this happens whenever one head pays):
such a run is named and left out of the ratio, never silently used or dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import head_layers, unique
from analysis.pareto import run_name

# What makes two runs comparable beside the model: the trained heads and the text drafted on.
SAME_HEADS = ("model", "heads", "head_rank", "primary_workload")


@dataclass(frozen=True)
class GroupRatio:
    """Best DSSD over best LayerSkip acceptance within one comparable group, and the two runs."""

    key: tuple
    ratio: float
    dssd: pd.Series
    layerskip: pd.Series


def kept_heads(row: pd.Series) -> list[int] | None:
    """The heads a run could exit at: ``metric.heads_kept``, or with every head kept (``all``) the
    heads in its ``per_head`` table; None when the record says neither."""
    kept = row.get("heads_kept")
    if isinstance(kept, str):
        try:
            kept = json.loads(kept)
        except ValueError:
            kept = None
    if isinstance(kept, list):
        return [int(h) for h in kept]
    if row.get("head_choice", "all") == "all":
        return head_layers(row.get("per_head")) or None
    return None


def degenerate(row: pd.Series) -> bool:
    """A DSSD run that kept at most one head (an unknown count is not called degenerate)."""
    heads = kept_heads(row)
    return row.get("mode") == "dssd" and heads is not None and len(heads) <= 1


def excluded_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The DSSD runs left out of every acceptance ratio because they kept one head or none."""
    mask = [degenerate(row) for _, row in df.iterrows()]
    return df[pd.Series(mask, index=df.index, dtype=bool)]


def exclusion_note(df: pd.DataFrame) -> str:
    """The excluded runs by name, with their kept heads and why ("" when none is excluded)."""
    rows = excluded_runs(df)
    if rows.empty:
        return ""
    named = "; ".join(f"{run_name(r)} (heads kept: {_heads_text(kept_heads(r))})" for _, r in rows.iterrows())
    return (
        f"Left out of the DSSD / LayerSkip ratio: {named}. DSSD with one head kept has no exit to choose "
        "between, so it is not the multi-head DSSD that the published ratio measures."
    )


def primary_workload(df: pd.DataFrame) -> pd.Series:
    """Each run's first workload (where its top-level acceptance was measured); "" for old records."""
    column = df.get("metric.workloads", pd.Series(None, index=df.index, dtype=object))
    return column.map(_first_workload)


def group_ratios(df: pd.DataFrame, column: str = "acceptance_rate") -> list[GroupRatio]:
    """Per comparable group (``SAME_HEADS``) holding both modes: best DSSD (degenerate runs left
    out) over best LayerSkip acceptance under the definition ``column`` holds."""
    if column not in df or df.empty:
        return []
    runs = df.assign(primary_workload=primary_workload(df), _rate=pd.to_numeric(df[column], errors="coerce"))
    runs = runs.assign(**{k: runs[k] if k in runs else np.nan for k in SAME_HEADS})
    # A rank means something only above 0 (low-rank heads); older records may lack the key.
    rank = pd.to_numeric(runs["head_rank"], errors="coerce")
    runs["head_rank"] = rank.where(rank > 0, 0.0)
    runs = runs[np.isfinite(runs["_rate"].astype(float)) & ~runs.index.isin(excluded_runs(df).index)]
    out = []
    for key, part in runs.groupby(list(SAME_HEADS), dropna=False, sort=False):
        dssd, layerskip = part[part["mode"] == "dssd"], part[part["mode"] == "layerskip"]
        if dssd.empty or layerskip.empty:
            continue
        best_d, best_l = dssd.loc[dssd["_rate"].idxmax()], layerskip.loc[layerskip["_rate"].idxmax()]
        if best_l["_rate"] > 0:
            out.append(GroupRatio(tuple(key), float(best_d["_rate"] / best_l["_rate"]), best_d, best_l))
    return out


def heads_words(ratio: GroupRatio) -> str:
    """The group's heads in words ("linear heads", "lowrank r=64 heads"), for a label."""
    _, arch, rank, workload = ratio.key
    arch_text = arch if isinstance(arch, str) else "heads of an unrecorded architecture"
    if isinstance(rank, int | float) and math.isfinite(rank) and rank > 0:
        arch_text += f" r={rank:g}"
    return f"{arch_text} heads" + (f", on `{workload}`" if workload else "")


def _first_workload(value: object) -> str:
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return ""
        return str(parsed[0]) if isinstance(parsed, list) and parsed else ""
    return ""


def _heads_text(heads: list[int] | None) -> str:
    if heads is None:
        return "unknown"
    return " ".join(map(str, heads)) if heads else "none"


def models_of(ratios: list[GroupRatio]) -> list:
    """The models the comparable groups belong to, each once."""
    return unique(r.key[0] for r in ratios)
