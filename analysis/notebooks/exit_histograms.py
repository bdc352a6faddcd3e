# %% [markdown]
# # Exit-layer histograms
# Share of decoded tokens leaving at each head, per run, beside the share of held-out tokens
# that the calibrated thresholds let out there.
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

from analysis.figures import fig_exit_histograms
from analysis.load import exit_histogram_table, latest_per_config, load_results
from analysis.pareto import mode_group, run_label
from analysis.plotting import save

RESULTS = Path(os.environ.get("EARLYEXIT_RESULTS", ROOT / "results" / "records.jsonl"))
OUT = Path(os.environ.get("EARLYEXIT_FIGURES", ROOT / "figures"))

# %% [markdown]
# Every ok run, newest per config.

# %%
df = latest_per_config(load_results(RESULTS))
print(f"{len(df)} runs")

# %% [markdown]
# Exits per layer and run, as a long table (from `metric.exit_histogram`).

# %%
hist = exit_histogram_table(df)
hist["run"] = mode_group(hist) + " " + hist.apply(run_label, axis=1)
print(hist.pivot_table(index="run", columns="layer", values="share").round(3).to_string())


# %% [markdown]
# The figure.

# %%
print(save(fig_exit_histograms(df), OUT, "exit_histograms"))
