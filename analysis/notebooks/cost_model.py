# %% [markdown]
# # Where decode time goes, and how well the cost model predicts it
# Each run's pass trace (what it computed: layers, rows, heads, unembeddings) priced by the
# component profile measured on its device (`earlyexit.measure.cost_model`), split into cost
# categories and set beside the measured mean time per output token.
# Same functions as `python -m analysis`; a jupytext "percent" script: open it as a notebook, or
# run it with plain `python`. Settings: `EARLYEXIT_RESULTS` (default `results/records.jsonl`),
# `EARLYEXIT_FIGURES` (default `figures`). Projections onto another device's profile are
# `python -m analysis.project --profile PROFILE.json`, kept apart from these measured numbers.

# %%
# ruff: noqa: E402 (the analysis package is importable only after the path is set)
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] if "__file__" in globals() else Path.cwd()
sys.path.insert(0, str(ROOT))

import pandas as pd

from analysis.figures import fig_predicted_vs_measured, fig_speedup_predicted_vs_measured, fig_time_breakdown
from analysis.load import COST_CATEGORIES, latest_per_config, load_results
from analysis.measures import (
    prediction_error_by_mode,
    prediction_points,
    speedup_prediction_error,
    time_breakdown,
)
from analysis.plotting import save

RESULTS = Path(os.environ.get("EARLYEXIT_RESULTS", ROOT / "results" / "records.jsonl"))
OUT = Path(os.environ.get("EARLYEXIT_FIGURES", ROOT / "figures"))
pd.set_option("display.width", 200)

# %% [markdown]
# Every ok run, newest per config; records from before the cost model have no predicted time
# and drop out of everything below.

# %%
df = latest_per_config(load_results(RESULTS))
priced = df[df["predicted_tpot_ms"].notna()]
print(f"{len(df)} runs, {len(priced)} with a predicted time per token")

# %% [markdown]
# Where the time goes: predicted ms per output token per category, one row per bar (the `full`
# row is the median of the full baselines measured beside every run), and the measured mean.

# %%
bars = time_breakdown(priced)
print(
    bars[["model", "timing", "label", "measured_ms", "predicted_ms", *COST_CATEGORIES]].round(4).to_string()
)

# %%
print(save(fig_time_breakdown(df), OUT, "time_breakdown"))

# %% [markdown]
# Predicted vs measured: every run's point and its full baseline's; error = predicted /
# measured − 1. The target is a median |error| of at most 15% for every mode.

# %%
points = prediction_points(priced)
print(prediction_error_by_mode(points).to_string())

# %%
print(save(fig_predicted_vs_measured(df), OUT, "predicted_vs_measured"))

# %% [markdown]
# The same for speedups over `full` (mean times): a run's mode and its baseline are timed
# interleaved, so a machine that drifted since the profile was measured cancels here. A run
# off the line above but on this one was timed on a faster or slower machine than the
# profile; a run off this one is what the cost model gets wrong.

# %%
others = priced[priced["mode"] != "full"]
errors = others.assign(speedup_error=speedup_prediction_error(others))
print(errors[["model", "mode", "target", "speedup_error"]].to_string())

# %%
print(save(fig_speedup_predicted_vs_measured(df), OUT, "speedup_predicted_vs_measured"))
