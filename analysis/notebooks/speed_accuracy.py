# %% [markdown]
# # Speed-accuracy Pareto fronts
# Early exit per confidence metric, DSSD per target and the LayerSkip (E, K) grid on the same axes,
# against speedup and against FLOPs saved. Same functions as `python -m analysis`; a jupytext
# "percent" script: open it as a notebook, or run it with plain `python`.
# Settings: `EARLYEXIT_RESULTS` (default `results/records.jsonl`), `EARLYEXIT_FIGURES` (default `figures`).

# %%
# ruff: noqa: E402 (the analysis package is importable only after the path is set)
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] if "__file__" in globals() else Path.cwd()
sys.path.insert(0, str(ROOT))

from analysis.figures import fig_speed_accuracy
from analysis.load import latest_per_config, load_results
from analysis.pareto import accuracy_axis, front
from analysis.plotting import save

RESULTS = Path(os.environ.get("EARLYEXIT_RESULTS", ROOT / "results" / "records.jsonl"))
OUT = Path(os.environ.get("EARLYEXIT_FIGURES", ROOT / "figures"))

# %% [markdown]
# Load every ok run, newest per config; pick the accuracy axis (lm-eval delta, or the held-out
# agreement proxy when no lossy run measured a task).

# %%
df = latest_per_config(load_results(RESULTS))
y, ylabel = accuracy_axis(df)
print(f"{len(df)} runs; accuracy axis: {ylabel}")

# %% [markdown]
# The fronts as a table: per model and series, the configs no other config beats on both axes.

# %%
for x in ("speedup", "flops_saved"):
    print(front(df, x, y)[["model", "group", "target", "exit_layer", "draft_length", x, y]].to_string())

# %% [markdown]
# The figures.

# %%
for x, name in (("speedup", "speed_accuracy_speedup"), ("flops_saved", "speed_accuracy_flops")):
    print(save(fig_speed_accuracy(df, x), OUT, name))
