"""summary.md's batch-size section: per workload, each run's throughput speedup with its interval
at every batch size, the per-sequence speedup, the cost model's error per B, and one sentence per
run saying at which B it stops paying.

Why sentences built from the records: "up to which batch size does early exit pay?" is the
question batched runs exist to answer, and a reader should not have to scan intervals in a table
to find it. "Stops paying at B = X" means the smallest B whose paired bootstrap 95% interval lies
wholly below 1: there the data rule out breaking even with full at that B. Where the point
estimate first drops below 1 is said beside it, since it can do so earlier, within noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.batches import (
    OVERALL,
    Verdict,
    batch_file_name,
    batch_frame,
    batch_references,
    batch_workload_order,
    unrecorded_sizes,
    verdict,
)
from analysis.load import LOSSLESS_MODES, is_true, unique
from analysis.summary import _num, markdown_table
from analysis.workload_summary import RUN_HEADER, _run_cells, baseline_run_cell
from analysis.workloads import baseline_order, run_order

NO_BATCHES = (
    "No run timed batched decoding (records without `metric.batch.*`; a run times it when "
    "`bench.batch_size` is a list)."
)


def sizes_text(sizes: Sequence[int]) -> str:
    """``1, 2, 4, 8``."""
    return ", ".join(str(b) for b in sizes)


def ratio_cell(row: pd.Series | None, column: str) -> str:
    """``1.23× [1.10–1.35]``: the ratio in ``column`` with its interval where recorded; "—" where
    the ratio was not, "not run" where the run did not time that B."""
    if row is None:
        return "not run"
    value = row.get(column)
    if pd.isna(value):
        return "—"
    cell = f"{_num(value, '.2f')}×"
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if pd.notna(low) and pd.notna(high):
        cell += f" [{_num(low, '.2f')}–{_num(high, '.2f')}]"
    return cell


def prediction_cell(row: pd.Series | None) -> str:
    """``predicted 1.25× (error +3.1%)``; "—" where the cost model did not price that B."""
    if row is None or (pd.isna(row.get("predicted_speedup")) and pd.isna(row.get("prediction_error"))):
        return "—"
    return (
        f"predicted {_num(row['predicted_speedup'], '.2f')}× (error {_num(row['prediction_error'], '+.1%')})"
    )


def _interval_words(row: pd.Series, column: str) -> str:
    return f"[{_num(row[f'{column}_ci_low'], '.2f')}–{_num(row[f'{column}_ci_high'], '.2f')}]"


def verdict_sentence(name: str, v: Verdict, rows: pd.DataFrame, column: str = "throughput_speedup") -> str:
    """One run's answer on one workload in words, every B and number taken from ``v`` and
    ``rows`` (the run's rows there, one per B)."""
    by_size = rows.set_index("batch_size")
    measured = f"B = {sizes_text(v.sizes)}"
    if not v.sizes:
        return f"{name}: no speedup recorded at any B."
    if v.never_pays:
        text = f"{name} never pays: its interval lies wholly below 1 at every B measured ({measured})"
    elif v.stops_at is None:
        text = f"{name} pays at every B measured ({measured})"
        if v.pays_everywhere:
            text += ": its interval lies wholly above 1 at each"
        else:
            text += ": its interval never lies wholly below 1"
            holds = f"holds 1 at B = {sizes_text(v.noise)}" if v.noise else ""
            missing = f"no interval at B = {sizes_text(v.no_interval)}" if v.no_interval else ""
            text += " (" + "; ".join(p for p in (holds, missing) if p) + ")"
    else:
        text = (
            f"{name} stops paying at B = {v.stops_at}: its interval there, "
            f"{_interval_words(by_size.loc[v.stops_at], column)}, lies wholly below 1"
        )
        if v.pays_again:
            text += f" (it pays again at B = {sizes_text(v.pays_again)}: not monotone in B)"
    if v.point_below_at is None:
        text += "; its point estimate never drops below 1"
    elif not v.never_pays:
        value = by_size.loc[v.point_below_at, column]
        text += f"; its point estimate first drops below 1 at B = {v.point_below_at} ({_num(value, '.2f')}×)"
    return text + "."


def _runs(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run, in the summary's reading order."""
    return run_order(rows.drop_duplicates("run_id"))


def _by_size(rows: pd.DataFrame, run_id: str) -> dict[int, pd.Series]:
    mine = rows[rows["run_id"] == run_id]
    return {int(r["batch_size"]): r for _, r in mine.iterrows()}


def speed_table(rows: pd.DataFrame, refs: pd.DataFrame, sizes: list[int], column: str) -> str:
    """Rows: runs, then the batched baselines' references where they record ``column``; columns:
    B; cells: the ratio in ``column`` with its interval."""
    table = []
    for _, run in _runs(rows).iterrows():
        mine = _by_size(rows, run["run_id"])
        table.append([*_run_cells(run), *(ratio_cell(mine.get(b), column) for b in sizes)])
    refs = refs[refs[column].notna()] if not refs.empty else refs
    if not refs.empty:
        keys = ["model", "device", "device_name", "dtype", "timing", "baseline"]
        for _, first in baseline_order(refs.drop_duplicates(keys)).iterrows():
            same = refs[(refs[keys].fillna("") == first[keys].fillna("")).all(axis=1)]
            mine = {int(r["batch_size"]): r for _, r in same.iterrows()}
            device = first["device_name"] if pd.notna(first.get("device_name")) else first.get("device")
            name = baseline_run_cell(first) + ", batched" + (" (busy machine)" if same["busy"].any() else "")
            cells = [ratio_cell(mine.get(b), column) for b in sizes]
            table.append([str(first["model"]), str(device), name, "—", "—", *cells])
    return markdown_table([*RUN_HEADER, *(f"B = {b}" for b in sizes)], table)


def prediction_table(rows: pd.DataFrame, sizes: list[int]) -> str:
    """The cost model's predicted speedup and its error (predicted / measured − 1 of the mode's
    time per token) per run and B, and the median abs(error) over the runs at each B; "" where
    no run on this workload was priced."""
    priced = rows[rows["predicted_speedup"].notna() | rows["prediction_error"].notna()]
    if priced.empty:
        return ""
    table = []
    for _, run in _runs(priced).iterrows():
        mine = _by_size(priced, run["run_id"])
        table.append([*_run_cells(run), *(prediction_cell(mine.get(b)) for b in sizes)])
    medians = []
    for b in sizes:
        errors = priced.loc[priced["batch_size"] == b, "prediction_error"].astype(float).abs().dropna()
        medians.append(f"{errors.median():.1%} ({len(errors)} run(s))" if not errors.empty else "—")
    table.append(["", "", "median abs(error)", "", "", *medians])
    return markdown_table([*RUN_HEADER, *(f"B = {b}" for b in sizes)], table)


def _where(rows: pd.DataFrame) -> str:
    """ "stdlib_completion at B = 4, 8; heldout at B = 8" (names in backticks): the workloads and
    sizes of ``rows``, leaving out the pooled entry where the workloads it pools are named."""
    rows = rows.sort_values(["position", "batch_size"])
    if (rows["workload"] != OVERALL).any():
        rows = rows[rows["workload"] != OVERALL]
    return "; ".join(
        f"`{w}` at B = {sizes_text(sorted(rows.loc[rows['workload'] == w, 'batch_size'].astype(int)))}"
        for w in unique(rows["workload"])
    )


def equality_sentence(bf: pd.DataFrame, refs: pd.DataFrame | None = None) -> str:
    """Whether any batched output differed from full's at the same B, by run, workload and B;
    each named lossless (should not differ: a near-tie in half precision, or a bug) or lossy; then
    the batched baselines' references that record it (left padding can part greedy outputs)."""
    runs = bf[bf["mode"] != "full"]
    checked = runs[runs["outputs_equal_full"].map(lambda v: isinstance(v, bool))]
    unchecked = len(runs) - len(checked)
    tail = f" {unchecked} (run, workload, B) result(s) record no check." if unchecked else ""
    differing = checked[~checked["outputs_equal_full"].astype(bool)]
    if checked.empty:
        text = "No batched result records whether its outputs equal full's." + tail
    elif differing.empty:
        text = f"Every batched output equals full's at the same B ({len(checked)} checked).{tail}"
    else:
        parts = []
        for run_id in unique(differing["run_id"]):
            mine = differing[differing["run_id"] == run_id]
            first = mine.iloc[0]
            kind = (
                "lossless: should not differ (a near-tie in half precision, or a bug)"
                if first["mode"] in LOSSLESS_MODES
                else "lossy: expected"
            )
            parts.append(f"{first['name']} ({kind}): {_where(mine)}")
        text = "Batched outputs that differ from full's at the same B: " + "; ".join(parts) + "." + tail
    if refs is None or refs.empty:
        return text
    parted = refs[refs["outputs_equal_full"].map(lambda v: isinstance(v, bool) and not v)]
    for name in unique(parted["baseline"]):
        rows = parted[parted["baseline"] == name]
        text += (
            f" Baseline {rows.iloc[0]['label']}, batched, differs from full's (left padding; greedy "
            f"outputs can part on near-ties): {_where(rows)}."
        )
    return text


def workload_block(bf: pd.DataFrame, refs: pd.DataFrame, workload: str, links: str) -> str:
    """One workload's sentences and tables."""
    rows = bf[(bf["workload"] == workload) & (bf["mode"] != "full")]
    mine_refs = refs[refs["workload"] == workload] if not refs.empty else refs
    sizes = sorted({*rows["batch_size"].astype(int), *mine_refs.get("batch_size", pd.Series(dtype=int))})
    title = "pooled over every workload" if workload == OVERALL else f"`{workload}`"
    parts = [f"### {title} ({links or 'no figure'})"]
    if rows.empty:
        return "\n\n".join([*parts, "No run other than full records a batched speedup here."])
    sentences = []
    for _, run in _runs(rows).iterrows():
        mine = rows[rows["run_id"] == run["run_id"]]
        name = f"{run['name']}" + (" (busy machine: timings unreliable)" if is_true(run["busy"]) else "")
        sentences.append("- " + verdict_sentence(name, verdict(mine), mine))
    parts += [
        "\n".join(sentences),
        "Throughput speedup [95% interval] per batch size:",
        speed_table(rows, mine_refs, sizes, "throughput_speedup"),
    ]
    if rows["seq_speedup"].notna().any():
        parts += ["Per-sequence speedup [95% interval] per batch size:"]
        parts.append(speed_table(rows, mine_refs, sizes, "seq_speedup"))
    predictions = prediction_table(rows, sizes)
    if predictions:
        parts += [
            "Cost model per batch size: predicted throughput speedup and prediction error:",
            predictions,
        ]
    return "\n\n".join(parts)


def batch_section(df: pd.DataFrame, written: dict[str, list[Path]] | None = None) -> str:
    """The section: what was measured, whether outputs differed, then one block per workload
    (``overall`` last)."""
    bf = batch_frame(df)
    if bf.empty:
        return NO_BATCHES
    refs = batch_references(df)
    written = written or {}
    runs = bf[bf["mode"] != "full"]
    sizes = sorted(set(bf["batch_size"].astype(int)))
    intro = (
        f"{bf['run_id'].nunique()} run(s) timed full, their mode and transformers' batched generate "
        f"interleaved at B = {sizes_text(sizes)}. Throughput speedup = the mode's tokens/s over the "
        "whole batch / full's at the same B; per-sequence speedup = full's time per output token "
        "after the first / the mode's, per sequence; both with a paired bootstrap 95% interval. "
        "A run stops paying at the smallest B whose throughput interval lies wholly below 1; where "
        "its point estimate first drops below 1 is given beside it. `baseline: …, batched` rows: "
        "transformers' left-padded greedy generate against the same full (the newest steady run's)."
    )
    busy = unique(runs.loc[runs["busy"], "name"])
    if busy:
        intro += f" On a busy machine (timings unreliable, drawn grey and dotted): {', '.join(busy)}."
    missing = unrecorded_sizes(df, bf)
    if missing:
        named = "; ".join(f"{name}: B = {sizes_text(b)}" for name, b in missing.items())
        intro += f" Listed in `bench.batch_size` but with no number recorded: {named}."
    parts = [intro, equality_sentence(bf, refs)]
    for workload in batch_workload_order(bf):
        paths = written.get(batch_file_name(workload), [])
        links = ", ".join(f"[{p.suffix[1:]}]({p.name})" for p in paths)
        parts.append(workload_block(bf, refs, workload, links))
    return "\n\n".join(parts)


def stop_sizes(df: pd.DataFrame, workload: str = OVERALL) -> dict[str, int | None]:
    """Each run's stopping B on ``workload`` by name (None: it never stops), for tests and notebooks."""
    bf = batch_frame(df)
    rows = bf[(bf["workload"] == workload) & (bf["mode"] != "full")]
    return {
        str(r["name"]): verdict(rows[rows["run_id"] == r["run_id"]]).stops_at
        for _, r in _runs(rows).iterrows()
    }
