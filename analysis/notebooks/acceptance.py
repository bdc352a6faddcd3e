# %% [markdown]
# # Acceptance rate: DSSD vs LayerSkip
# Accepted drafts per draft, DSSD per metric and target beside the LayerSkip (E, K) grid. The
# DSSD paper reports 1.66x the acceptance of a tuned LayerSkip baseline (arXiv 2407.21082).
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

from analysis.figures import fig_acceptance
from analysis.load import latest_per_config, load_results
from analysis.measures import ACCEPTANCE_DEFINITIONS, acceptance_ratio
from analysis.plotting import save

RESULTS = Path(os.environ.get("EARLYEXIT_RESULTS", ROOT / "results" / "records.jsonl"))
OUT = Path(os.environ.get("EARLYEXIT_FIGURES", ROOT / "figures"))

# %% [markdown]
# Every ok run, newest per config.

# %%
df = latest_per_config(load_results(RESULTS))
print(f"{len(df)} runs")

# %% [markdown]
# Acceptance per run, and best DSSD over best LayerSkip per model, under both definitions:
# head drafts only (`acceptance_rate`), and full-model tokens counted as accepted drafts as the
# public DSSD demo counts them (`acceptance_rate_demo`; DESIGN.md).

# %%
spec = df[df["mode"].isin(["dssd", "layerskip"])]
columns = ["model", "mode", "metric", "target", "exit_layer", "draft_length", *ACCEPTANCE_DEFINITIONS]
print(spec[columns].to_string())
for model, part in spec.groupby("model"):
    for column, definition in ACCEPTANCE_DEFINITIONS.items():
        print(model, f"best DSSD / best LayerSkip = {acceptance_ratio(part, column):.2f}x ({definition})")

# %% [markdown]
# The figure.

# %%
print(save(fig_acceptance(df), OUT, "acceptance"))
