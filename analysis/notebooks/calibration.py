# %% [markdown]
# # Calibration: target vs achieved held-out agreement
# Per head, the held-out agreement of the tokens it lets exit, against the calibration target;
# points on y = x mean the calibration transfers from calibration text to held-out text.
# Same functions as `python -m analysis`; a jupytext "percent" script: open it as a notebook, or
# run it with plain `python`. Settings: `EARLYEXIT_RESULTS` (default `results/records.jsonl`),
# `EARLYEXIT_FIGURES` (default `figures`).

# %%
# ruff: noqa: E402 (the analysis package is importable only after the path is set)
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] if "__file__" in globals() else Path.cwd()
sys.path.insert(0, str(ROOT))

from analysis.figures import fig_calibration
from analysis.load import THRESHOLD_MODES, latest_per_config, load_results, per_head_table
from analysis.plotting import save

RESULTS = Path(os.environ.get("EARLYEXIT_RESULTS", ROOT / "results" / "records.jsonl"))
OUT = Path(os.environ.get("EARLYEXIT_FIGURES", ROOT / "figures"))

# %% [markdown]
# Every ok run, newest per config.

# %%
df = latest_per_config(load_results(RESULTS))
print(f"{len(df)} runs")

# %% [markdown]
# Achieved agreement per metric, target and head (early-exit and DSSD runs).

# %%
heads = per_head_table(df[df["mode"].isin(THRESHOLD_MODES)])
print(
    heads.pivot_table(index=["metric", "target"], columns="layer", values="heldout_agreement_at_target")
    .round(3)
    .to_string()
)

# %% [markdown]
# The figure.

# %%
print(save(fig_calibration(df), OUT, "calibration"))
