# %% [markdown]
# # Confidence-metric separation (AUROC)
# How well each confidence metric predicts, per head, whether the head agrees with the final
# layer (0.5 = chance). The DSSD paper reports entropy separating best on Pythia.
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

from analysis.figures import fig_separation
from analysis.load import latest_per_config, load_results, per_head_table
from analysis.plotting import save

RESULTS = Path(os.environ.get("EARLYEXIT_RESULTS", ROOT / "results" / "records.jsonl"))
OUT = Path(os.environ.get("EARLYEXIT_FIGURES", ROOT / "figures"))

# %% [markdown]
# Every ok run, newest per config.

# %%
df = latest_per_config(load_results(RESULTS))
print(f"{len(df)} runs")

# %% [markdown]
# Median AUROC per model, head architecture and head layer (from `per_head`).

# %%
heads = per_head_table(df)
auroc = [c for c in heads.columns if c.startswith("auroc_")]
print(heads.groupby(["model", "heads", "layer"])[auroc].median().round(3).to_string())

# %% [markdown]
# The figure.

# %%
print(save(fig_separation(df), OUT, "separation_auroc"))
