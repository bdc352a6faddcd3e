"""Published headline numbers (``published.csv``) beside the matching measured numbers, with how well
model, task and hardware actually match, so a reader never mistakes context for a replication.

Every row of ``published.csv`` is one number from the sourced table in docs/DESIGN.md ("Published
results, with where each number was read"): paper version, where in the source it was read
(``source_kind``: the paper's own text, only its abstract, or a blog post), model, task, hardware
and metric. What a source does not state is written as "not stated ...", never left blank.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from analysis.load import unique
from analysis.measures import acceptance_ratios, best_kv_speedup, best_speedup, fewest_layers

PUBLISHED_CSV = Path(__file__).with_name("published.csv")
COLUMNS = (
    "paper",
    "arxiv_id",
    "paper_version",
    "source_kind",
    "table_or_figure",
    "model",
    "setting",
    "task",
    "hardware",
    "metric",
    "value",
    "note",
)
# Cells every row must fill: a blank would read as "any", which no source says.
REQUIRED = ("paper", "arxiv_id", "paper_version", "source_kind", "table_or_figure", "model", "task")
REQUIRED += ("hardware", "metric")
SOURCE_KINDS = ("primary", "abstract", "blog")
# DESIGN.md's "Comparison caveats", to stand beside any published-vs-measured comparison.
CAVEATS = (
    "Comparison caveats: LayerSkip's autoregressive baseline is a model trained without LayerSkip; "
    "CALM's speedups are estimates and its main efficiency figure is layers per token; DSSD's "
    "published ratio compares acceptance, not time."
)
NOT_STATED = "not stated"

Reading = tuple[float, str]  # (our value, what it is)


def load_published(path: str | Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The published numbers; refuses a blank required cell or an unknown source kind."""
    table = pd.read_csv(path, dtype={"arxiv_id": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    blank = [(i + 2, c) for c in REQUIRED for i in table.index[table[c].str.strip() == ""]]
    if blank:
        raise ValueError(f"{path}: blank cells (line, column): {blank}; write 'not stated ...' instead")
    unknown = set(table["source_kind"]) - set(SOURCE_KINDS)
    if unknown:
        raise ValueError(f"{path}: source_kind must be one of {SOURCE_KINDS}, got {sorted(unknown)}")
    table["value"] = pd.to_numeric(table["value"], errors="raise")
    return table


DSSD_ARXIV, DSSD_RATIO_METRIC = "2407.21082", "acceptance_ratio_vs_layerskip"


def dssd_published_ratio(published: pd.DataFrame) -> float:
    """The DSSD paper's acceptance ratio against LayerSkip, as ``published.csv`` holds it (NaN if
    the table has no such row), so that no figure or sentence carries the number by hand."""
    rows = published[(published["arxiv_id"] == DSSD_ARXIV) & (published["metric"] == DSSD_RATIO_METRIC)]
    return float(rows["value"].iloc[0]) if not rows.empty else float("nan")


def _speculative(df: pd.DataFrame) -> list[Reading]:
    """Methods no mode here implements (sub-layer skipping, layers skipped on the fly): the
    nearest are our lossless self-speculative modes."""
    return [best_speedup(df, ("layerskip", "dssd", "del"))]


def _layerskip_acceptance(df: pd.DataFrame) -> list[Reading]:
    """LayerSkip always exits at E, so its two acceptance definitions coincide (speculative.py)."""
    rate = pd.to_numeric(df.loc[df["mode"] == "layerskip", "acceptance_rate"], errors="coerce").max()
    if pd.isna(rate):
        return [(float("nan"), "no layerskip run")]
    return [(float(rate), "best layerskip acceptance (head drafts; both definitions agree for it)")]


def _ratio(df: pd.DataFrame) -> list[Reading]:
    """Best DSSD / best LayerSkip acceptance under both definitions, each named."""
    readings = []
    for value, what in acceptance_ratios(df):
        label = f"best DSSD / best LayerSkip acceptance, {what}"
        if pd.isna(value):
            label = (
                "needs DSSD and LayerSkip runs on the same model and heads (DSSD with more than one "
                f"head kept) that record this acceptance ({what})"
            )
        readings.append((value, label))
    return readings


# (arxiv id, published metric) -> what we measured that corresponds to it, per model.
MEASURES: dict[tuple[str, str], Callable[[pd.DataFrame], list[Reading]]] = {
    (DSSD_ARXIV, DSSD_RATIO_METRIC): _ratio,
    ("2404.16710", "speedup"): lambda df: [best_speedup(df, ("layerskip",))],
    ("2404.16710", "acceptance"): _layerskip_acceptance,
    # CALM propagates an exited token's state to the skipped layers' K/V: our `propagate` strategy.
    ("2207.07061", "layers_per_token"): lambda df: [fewest_layers(df, "propagate")],
    ("2207.07061", "speedup_estimated"): lambda df: [best_kv_speedup(df, "propagate")],
    ("2309.08168", "speedup"): _speculative,
    # DEL: our `del` mode implements it (LayerSkip with E and K chosen per round).
    ("2504.05598", "speedup"): lambda df: [best_speedup(df, ("del",))],
    ("2410.06916", "speedup"): _speculative,
}


def _norm(text: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def _stated(text: str) -> bool:
    return bool(text) and not text.startswith(NOT_STATED)


def model_match(published: str, ours: str) -> str:
    """ "yes", "family only" (e.g. Pythia 70M-2.8B vs pythia-410m), "not stated" or "no"."""
    if not _stated(published):
        return NOT_STATED
    pub, mine = _norm(published), _norm(Path(ours).name)
    if pub == mine:
        return "yes"
    family = _norm(published.split()[0])
    if mine.startswith(pub) or (family and mine.startswith(family)):
        return "family only"
    return "no"


def task_match(published: str, ours: str) -> str:
    """Speed is measured on held-out prompts of ``data.source``, so that is our "task" for it."""
    if not _stated(published):
        return NOT_STATED
    return "yes" if _norm(published) == _norm(ours) else "no"


def hardware_match(published: str, ours: list[str]) -> str:
    """ "yes" when the published device (e.g. H100) is named in one of ours, "not stated" or "no"."""
    if not _stated(published):
        return NOT_STATED
    return "yes" if any(_norm(published) in _norm(device) for device in ours) else "no"


def _our_hardware(part: pd.DataFrame) -> list[str]:
    names = {str(d) for column in ("device_name", "device") if column in part for d in part[column].dropna()}
    return sorted(names)


def compare(measured: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per (published number, measured model, reading): both values and whether they are
    comparable. A published number with two readings (DSSD's ratio under both acceptance
    definitions) gets two rows, each naming its definition."""
    rows = []
    source = measured.get("config.data.source", pd.Series("?", index=measured.index))
    for _, pub in published.iterrows():
        measure = MEASURES.get((pub["arxiv_id"], pub["metric"]))
        for model in unique(measured["model"]) or ["(no runs)"]:
            part = measured[measured["model"] == model]
            readings = measure(part) if measure else [(float("nan"), "no measurement of this metric")]
            ours_task = "/".join(map(str, unique(source[part.index]))) or "?"
            devices = _our_hardware(part)
            m_match, t_match = model_match(pub["model"], model), task_match(pub["task"], ours_task)
            for value, what in readings:
                rows.append(
                    {
                        "paper": pub["paper"],
                        "arxiv_id": pub["arxiv_id"],
                        "paper_version": pub["paper_version"],
                        "source_kind": pub["source_kind"],
                        "table_or_figure": pub["table_or_figure"],
                        "metric": pub["metric"],
                        "published_model": pub["model"],
                        "published_setting": pub["setting"],
                        "published_task": pub["task"],
                        "published_hardware": pub["hardware"],
                        "published": float(pub["value"]),
                        "our_model": model,
                        "our_task": f"held-out {ours_task} prompts",
                        "our_hardware": ", ".join(devices) or "?",
                        "measured": value,
                        "measured_what": what,
                        "model_match": m_match,
                        "task_match": t_match,
                        "hardware_match": hardware_match(pub["hardware"], devices),
                        "comparable": m_match == "yes" and t_match == "yes",
                        "note": pub["note"],
                    }
                )
    return pd.DataFrame.from_records(rows)
