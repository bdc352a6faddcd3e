"""Speed-accuracy Pareto fronts: which configs are worth running at all.

A config is on the front when no other config of its group is at least as fast (or saves at least
as many FLOPs) *and* at least as accurate, and strictly better in one of the two. The edge cases are
decided here, once, so figures and tables agree:

- ties: equal in one coordinate and worse in the other is dominated (weak dominance);
- duplicates: points with identical coordinates do not dominate each other, so all of them are
  on the front (or all off it); ``front`` keeps every one, sorted, so nothing silently vanishes;
- NaN or infinite coordinates: not a measurement; such a point is never on the front and never
  dominates another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.load import (
    DEFAULT_HEAD_CHOICE,
    DEFAULT_KV,
    THRESHOLD_MODES,
    head_choice,
    is_true,
    kv_strategy,
)

MODE_LABELS = {
    "full": "full",
    "early-exit": "early-exit",
    "dssd": "DSSD",
    "layerskip": "LayerSkip",
    "del": "DEL",
}
# Fronts are per model, timing regime (eager or CUDA graphs) and series (mode, metric and KV
# strategy: see ``mode_group``); a frame without a timing column (built by hand) is one regime.
GROUP_KEYS = ("model", "timing", "group")


def pareto_mask(
    x: Sequence[float], y: Sequence[float], maximize: tuple[bool, bool] = (True, True)
) -> np.ndarray:
    """Boolean mask of the non-dominated points among (x[i], y[i]); see the module docstring for ties."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-d and of equal length, got {xs.shape} and {ys.shape}")
    xs = xs if maximize[0] else -xs
    ys = ys if maximize[1] else -ys
    valid = np.isfinite(xs) & np.isfinite(ys)
    # dominated[i, j]: point j dominates point i. O(n^2), plenty for a few thousand runs, and
    # obviously correct, which a sweep-line version with ties would not be.
    ge = (xs[None, :] >= xs[:, None]) & (ys[None, :] >= ys[:, None])
    gt = (xs[None, :] > xs[:, None]) | (ys[None, :] > ys[:, None])
    dominated = (ge & gt & valid[None, :]).any(axis=1)
    return valid & ~dominated


def mode_group(df: pd.DataFrame) -> pd.Series:
    """The series a run belongs to: early-exit per confidence metric and KV strategy (named even
    when it is the default, so a legend never leaves the reader to guess), DSSD per metric,
    LayerSkip and full alone. A KV strategy other than fill is named in any mode, and so are
    heads chosen by priced time (``calibration.heads=priced``)."""
    labels = df["mode"].map(lambda m: MODE_LABELS.get(m, str(m)))
    with_metric = df["mode"].isin(THRESHOLD_MODES) & df["metric"].notna()
    labels = labels.where(~with_metric, labels + " · " + df["metric"].astype(str))
    kv = kv_strategy(df)
    named = (df["mode"] == "early-exit") | (kv != DEFAULT_KV)
    labels = labels.where(~named, labels + " · KV " + kv.astype(str))
    priced = df["mode"].isin(THRESHOLD_MODES) & (head_choice(df) != DEFAULT_HEAD_CHOICE)
    return labels.where(~priced, labels + " · " + head_choice(df).astype(str) + " heads")


def run_label(row: pd.Series) -> str:
    """What distinguishes runs within a series: the target, LayerSkip's (E, K), or DEL's largest
    draft (DEL picks its exit layer and draft length per round, so only the cap is a setting)."""
    if row.get("mode") == "layerskip":
        return f"E={_int(row.get('exit_layer'))} K={_int(row.get('draft_length'))}"
    if row.get("mode") == "del":
        cap = row.get("max_draft")
        return f"K≤{_int(cap)}" if isinstance(cap, int | float) and math.isfinite(cap) else "adaptive E, K"
    target = row.get("target")
    if isinstance(target, int | float) and math.isfinite(target):
        return f"t={target:g}"
    return str(row.get("mode"))


def run_name(row: pd.Series) -> str:
    """A run in a few words: its series and what distinguishes it there ("DSSD · entropy t=0.8",
    "LayerSkip E=2 K=4", "DEL K≤8", "early-exit · entropy · KV propagate t=0.8", "full"). The default KV
    strategy (fill) goes unnamed here, so names of older records stay as they were."""
    mode = row.get("mode")
    name = MODE_LABELS.get(mode, str(mode))
    if mode == "full":
        return name
    metric = row.get("metric")
    if mode in THRESHOLD_MODES and isinstance(metric, str):
        name += f" · {metric}"
    kv = row.get("kv")
    if isinstance(kv, str) and kv != DEFAULT_KV:
        name += f" · KV {kv}"
    choice = row.get("head_choice")
    if mode in THRESHOLD_MODES and isinstance(choice, str) and choice != DEFAULT_HEAD_CHOICE:
        name += f" · {choice} heads"
    return f"{name} {run_label(row)}"


def _int(value: object) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return str(int(value))
    return "?"


def mark_fronts(
    df: pd.DataFrame,
    x: str,
    y: str,
    by: Sequence[str] | None = None,
    maximize: tuple[bool, bool] = (True, True),
    include_busy: bool = False,
) -> pd.DataFrame:
    """A copy of ``df`` with ``group`` (see ``mode_group``) and ``on_front``, computed within each
    ``by`` (default: those of ``GROUP_KEYS`` that ``df`` has).

    Runs flagged ``busy`` (timed on a busy machine, or priced by an inconsistent profile) are
    neither on a front nor dominate another run unless ``include_busy``: their speed is not the
    method's, and a front drawn through them would mislead.
    """
    out = df.copy()
    if "group" not in out:
        out["group"] = mode_group(out)
    out["on_front"] = False
    if out.empty:
        return out
    by = group_keys(out, by)
    parts = [part for _, part in out.groupby(by, dropna=False, sort=False)] if by else [out]
    for part in parts:
        xs, ys = part[x].astype(float), part[y].astype(float)
        if not include_busy and "busy" in part:
            measured = ~part["busy"].map(is_true)
            xs, ys = xs.where(measured), ys.where(measured)
        out.loc[part.index, "on_front"] = pareto_mask(xs, ys, maximize)
    return out


def front(
    df: pd.DataFrame,
    x: str,
    y: str,
    by: Sequence[str] | None = None,
    maximize: tuple[bool, bool] = (True, True),
    include_busy: bool = False,
) -> pd.DataFrame:
    """Only the front rows, sorted by group then x (the order to draw the front's line in)."""
    marked = mark_fronts(df, x, y, by, maximize, include_busy)
    rows = marked[marked["on_front"]]
    return rows.sort_values([*group_keys(marked, by), x, y], kind="stable").reset_index(drop=True)


def group_keys(df: pd.DataFrame, by: Sequence[str] | None) -> list[str]:
    """``by`` as given, or by default those of ``GROUP_KEYS`` that ``df`` has."""
    return [key for key in GROUP_KEYS if key in df] if by is None else list(by)


def accuracy_axis(df: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label) for accuracy: lm-eval's delta where lossy runs have one, else the proxy.

    Lossless runs have a delta of 0 by construction, so only lossy runs can tell whether an
    accuracy task was measured; without one, held-out token agreement with the full model is the
    best accuracy signal every run has.
    """
    lossy = df[~df["lossless"]] if "lossless" in df else df
    if lossy.empty or lossy["acc_delta"].notna().any():
        return "acc_delta", "accuracy Δ vs full (lm-eval)"
    return "agreement_delta", "agreement Δ vs full (held-out proxy)"
