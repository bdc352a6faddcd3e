"""Published headline numbers (``published.csv``) beside the matching measured numbers, with how well
model, task and hardware actually match, so a reader never mistakes context for a replication.

Every value in ``published.csv`` is taken from docs/DESIGN.md, which cites the papers; where DESIGN.md
does not say (table, model, task, hardware), the CSV says so instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import unique
from analysis.measures import acceptance_ratio, best_speedup

PUBLISHED_CSV = Path(__file__).with_name("published.csv")
COLUMNS = ("paper", "arxiv_id", "table_or_figure", "model", "task", "metric", "value", "note")


def load_published(path: str | Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The published numbers; empty model/task cells mean "not recorded", never "any"."""
    table = pd.read_csv(path, dtype={"arxiv_id": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    table["value"] = pd.to_numeric(table["value"], errors="raise")
    return table


def _ratio(df: pd.DataFrame) -> tuple[float, str]:
    value = acceptance_ratio(df)
    what = "best DSSD / best LayerSkip acceptance" if np.isfinite(value) else "needs DSSD and LayerSkip runs"
    return value, what


# (arxiv id, published metric) -> what we measured that corresponds to it, per model.
MEASURES: dict[tuple[str, str], Callable[[pd.DataFrame], tuple[float, str]]] = {
    ("2407.21082", "acceptance_ratio_vs_layerskip"): _ratio,
    ("2404.16710", "speedup"): lambda df: best_speedup(df, ("layerskip",)),
    ("2404.16710", "speedup_min"): lambda df: best_speedup(df, ("layerskip",)),
    # Draft & Verify drafts by skipping searched sub-layers: no mode here does that; the nearest
    # are our lossless self-speculative modes.
    ("2309.08168", "speedup"): lambda df: best_speedup(df, ("layerskip", "dssd")),
}


def _norm(text: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def model_match(published: str, ours: str) -> str:
    """ "yes", "family only" (e.g. Pythia, size not recorded), "not recorded" or "no"."""
    if not published:
        return "not recorded"
    pub, mine = _norm(published), _norm(Path(ours).name)
    if pub == mine:
        return "yes"
    if mine.startswith(pub):
        return "family only"
    return "no"


def task_match(published: str, ours: str) -> str:
    """Speed is measured on held-out prompts of ``data.source``, so that is our "task" for it."""
    if not published:
        return "not recorded"
    return "yes" if _norm(published) == _norm(ours) else "no"


def compare(measured: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per (published number, measured model): both values and whether they are comparable."""
    rows = []
    source = measured.get("config.data.source", pd.Series("?", index=measured.index))
    for _, pub in published.iterrows():
        measure = MEASURES.get((pub["arxiv_id"], pub["metric"]))
        for model in unique(measured["model"]) or ["(no runs)"]:
            part = measured[measured["model"] == model]
            value, what = measure(part) if measure else (float("nan"), "no measurement of this metric")
            ours_task = "/".join(map(str, unique(source[part.index]))) or "?"
            hardware = ", ".join(sorted({str(d) for d in part["device_name"].dropna()})) or "?"
            m_match, t_match = model_match(pub["model"], model), task_match(pub["task"], ours_task)
            comparable = m_match == "yes" and t_match == "yes"
            rows.append(
                {
                    "paper": pub["paper"],
                    "arxiv_id": pub["arxiv_id"],
                    "table_or_figure": pub["table_or_figure"],
                    "metric": pub["metric"],
                    "published_model": pub["model"] or "not recorded",
                    "published_task": pub["task"] or "not recorded",
                    "published": float(pub["value"]),
                    "our_model": model,
                    "our_task": f"held-out {ours_task} prompts",
                    "our_hardware": hardware,
                    "measured": value,
                    "measured_what": what,
                    "model_match": m_match,
                    "task_match": t_match,
                    "comparable": comparable,
                    "note": pub["note"],
                }
            )
    return pd.DataFrame.from_records(rows)
