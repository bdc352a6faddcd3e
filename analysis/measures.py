"""Headline numbers derived from several runs at once (best of a grid, ratios between modes).

Kept apart from the figures so that the summary and the published comparison compute them the same
way without importing matplotlib.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.pareto import run_label


def acceptance_ratio(df: pd.DataFrame) -> float:
    """Best DSSD acceptance over best LayerSkip acceptance, as the DSSD paper compares against a
    manually tuned LayerSkip baseline; NaN if either mode is missing."""
    rate = pd.to_numeric(df["acceptance_rate"], errors="coerce")
    dssd = rate[df["mode"] == "dssd"].max()
    layerskip = rate[df["mode"] == "layerskip"].max()
    if not (np.isfinite(dssd) and np.isfinite(layerskip)) or layerskip <= 0:
        return float("nan")
    return float(dssd / layerskip)


def best_speedup(df: pd.DataFrame, modes: tuple[str, ...]) -> tuple[float, str]:
    """(highest speedup among runs of ``modes``, which run it was); NaN and a reason if none."""
    rows = df[df["mode"].isin(modes)]
    rows = rows[np.isfinite(pd.to_numeric(rows["speedup"], errors="coerce"))]
    if rows.empty:
        return float("nan"), f"no {'/'.join(modes)} run"
    row = rows.loc[rows["speedup"].astype(float).idxmax()]
    return float(row["speedup"]), f"best {row['mode']} ({run_label(row)})"
