# %% [markdown]
# # Acceptance rate: DSSD vs LayerSkip
# Accepted drafts per draft, DSSD per metric and target beside the LayerSkip (E, K) grid. The
# DSSD paper reports a ratio of its acceptance to a tuned LayerSkip baseline's (arXiv 2407.21082,
# the value in `analysis/published.csv`).
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

from analysis.acceptance import exclusion_note, group_ratios, heads_words
from analysis.figures import fig_acceptance
from analysis.load import latest_per_config, load_results
from analysis.measures import ACCEPTANCE_DEFINITIONS
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
# Ratios only within comparable runs (same model, heads and workload); DSSD runs that kept one head
# are left out (`analysis.acceptance`).
for column, definition in ACCEPTANCE_DEFINITIONS.items():
    for group in group_ratios(spec, column):
        words = f"({definition}, {heads_words(group)})"
        print(group.key[0], f"best DSSD / best LayerSkip = {group.ratio:.2f}x {words}")
print(exclusion_note(spec) or "no DSSD run left out")

# %% [markdown]
# The figure.

# %%
print(save(fig_acceptance(df), OUT, "acceptance"))
