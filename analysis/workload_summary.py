"""summary.md's sections on generation workloads, log-likelihood accuracy, machine load and the
published generation numbers beside ours.

Why apart from ``summary.py``: these sections read the per-workload frame (``analysis.workloads``)
rather than one row per run, and every sentence in them that states a number is built from the
records here, so a reader can trust the prose as much as the tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import StoreCounts, is_true, unique
from analysis.pareto import run_name
from analysis.published import CAVEATS, hardware_match, model_match
from analysis.summary import ARCH_HEADER, _num, _text, arch_cell, markdown_table, speedup_cell
from analysis.workloads import (
    OVERALL,
    baseline_frame,
    baseline_order,
    baseline_overall_frame,
    file_name,
    headline_metric,
    higher_is_better,
    overall_frame,
    reference_baselines,
    reference_points,
    run_order,
    speed_quality_points,
    workload_frame,
    workload_info,
    workload_order,
)

LOGLIKELIHOOD_LABEL = (
    "log-likelihood tasks: an exit changes which token is scored; no generation is timed on them, "
    "so they show no speedup"
)
NOT_RUN = "not run"

# ---------------------------------------------------------------- records and machine load


def records_section(df: pd.DataFrame, counts: StoreCounts | None) -> str:
    """How many records were left out and why, then the runs on a busy machine."""
    return "\n\n".join([skipped_sentence(counts), busy_sentence(df)])


def skipped_sentence(counts: StoreCounts | None) -> str:
    """Failed runs, unreadable lines, unknown schema versions and older repeats, counted."""
    if counts is None:
        return "Skipped records: not counted (this summary was not written from a store file)."
    lines = f" (line {', '.join(map(str, counts.unreadable))})" if counts.unreadable else ""
    return (
        f"The store holds {counts.lines} record line(s): {counts.ok} finished run(s) read; skipped "
        f"{counts.failed} failed run(s) (status `failed`: no numbers), {len(counts.unreadable)} "
        f"unreadable line(s){lines} and {counts.unknown_schema} record(s) of an unknown schema "
        f"version; {counts.repeats} older run(s) of a repeated config left out (the newest is kept; "
        "`--all-repeats` keeps every one)."
    )


def busy_sentence(df: pd.DataFrame) -> str:
    """ "N runs on a busy machine, excluded from fronts: ..." with each one's reason and load."""
    busy = df[df["busy"].map(is_true)] if "busy" in df else df.iloc[:0]
    unflagged = int((df["machine_busy"].isna() & df["profile_inconsistent"].isna()).sum())
    old = (
        f" {unflagged} run(s) carry no machine-load verdict (from before the check, or it could not tell)."
        if unflagged
        else ""
    )
    if busy.empty:
        return f"0 runs on a busy machine, excluded from fronts.{old}"
    several = len(unique(df["model"])) > 1
    named = "; ".join(
        (f"{r['model']}: " if several else "") + f"{run_name(r)} ({r['busy_reason']}{load_detail(r)})"
        for _, r in busy.iterrows()
    )
    return (
        f"{len(busy)} run(s) on a busy machine, excluded from fronts: {named}. They stay in the tables, "
        f"marked, and are drawn grey and hatched.{old}"
    )


def load_detail(row: pd.Series) -> str:
    """The machine-load numbers a record carries, in words ("" where it has none)."""
    parts = []
    start, end = row.get("load_avg_start"), row.get("load_avg_end")
    if pd.notna(start) or pd.notna(end):
        parts.append(f"1-min load average {_num(start, '.2f')} → {_num(end, '.2f')}")
    if pd.notna(row.get("cpu_steal_share")):
        parts.append(f"CPU steal {_num(row['cpu_steal_share'], '.1%')}")
    if pd.notna(row.get("full_tpot_spread")):
        parts.append(f"full's per-token time spread {_num(row['full_tpot_spread'], '.2f')}×")
    return "; " + ", ".join(parts) if parts else ""


# ---------------------------------------------------------------- speed per workload (Spec-Bench style)


def column_header(wf: pd.DataFrame, workload: str) -> str:
    """A workload's column title: its name, domain and prompt count."""
    info = workload_info(wf, workload)
    return f"{workload} ({info['domain']}, {info['prompts']})"


def speed_cell(row: pd.Series | None) -> str:
    """``1.23× [1.10–1.35] · 2.1 tok/pass``; no tok/pass where none was recorded (early-exit has
    no verification pass); "not run" where the run did not time this workload."""
    if row is None:
        return NOT_RUN
    cell = speedup_cell(row)
    mat = row.get("mean_accepted_tokens")
    return cell + (f" · {_num(mat, '.1f')} tok/pass" if pd.notna(mat) and cell != "—" else "")


RUN_HEADER = ["model", "device", "run", "KV", ARCH_HEADER]


def _run_cells(row: pd.Series) -> list[str]:
    """The cells under ``RUN_HEADER``: KV and head architecture in columns of their own, so that
    runs differing only there never read as one row twice."""
    name = run_name(row) + ("" if row.get("timing") in ("eager", None) else f" · {row['timing']}")
    device = row.get("device_name") if pd.notna(row.get("device_name")) else row.get("device")
    name += " (busy machine)" if is_true(row.get("busy")) else ""
    return [_text(row["model"]), _text(device), name, _text(row.get("kv")), arch_cell(row)]


def speed_table(
    wf: pd.DataFrame,
    overall: pd.DataFrame,
    refs: pd.DataFrame | None = None,
    overall_refs: pd.DataFrame | None = None,
) -> str:
    """Rows: runs (series and setting), then the baselines' references (``reference_baselines``);
    columns: each workload, then overall."""
    order = workload_order(wf)
    runs = run_order(wf.drop_duplicates("run_id"))
    pooled = overall.set_index("run_id") if not overall.empty else overall
    rows = []
    for _, run in runs.iterrows():
        mine = wf[wf["run_id"] == run["run_id"]].set_index("workload")
        cells = [speed_cell(mine.loc[w] if w in mine.index else None) for w in order]
        cells.append(speed_cell(pooled.loc[run["run_id"]]) if run["run_id"] in pooled.index else "—")
        rows.append([*_run_cells(run), *cells])
    rows += baseline_speed_rows(order, refs, overall_refs)
    return markdown_table([*RUN_HEADER, *(column_header(wf, w) for w in order), "overall"], rows)


BASELINE_KEYS = ["model", "device", "device_name", "dtype", "timing", "baseline"]


def baseline_speed_rows(
    order: list[str], refs: pd.DataFrame | None, overall_refs: pd.DataFrame | None
) -> list[list[str]]:
    """One speed-table row per baseline and machine: its reference on each workload (``busy
    machine`` where only busy runs measured it) and pooled over workloads."""
    if refs is None or refs.empty:
        return []
    rows = []
    for _, first in baseline_order(refs.drop_duplicates(BASELINE_KEYS)).iterrows():
        same = _same_baseline(refs, first)
        cells = [_baseline_speed_cell(same[same["workload"] == w]) for w in order]
        pooled = _same_baseline(overall_refs, first) if overall_refs is not None else None
        cells.append(_baseline_speed_cell(pooled) if pooled is not None and not pooled.empty else "—")
        device = first["device_name"] if pd.notna(first.get("device_name")) else first.get("device")
        rows.append([_text(first["model"]), _text(device), baseline_run_cell(first), "—", "—", *cells])
    return rows


def baseline_run_cell(row: pd.Series) -> str:
    """``baseline: assisted (draft: …)``, with the timing regime where it is not eager."""
    timing = "" if row.get("timing") in ("eager", None) else f" · {row['timing']}"
    return f"baseline: {_text(row['label'])}{timing}"


def _same_baseline(rows: pd.DataFrame, like: pd.Series) -> pd.DataFrame:
    """The rows of ``rows`` for the same baseline on the same model, machine, dtype and timing."""
    return rows[_matches(rows, like, [k for k in BASELINE_KEYS if k in rows])]


def _baseline_speed_cell(rows: pd.DataFrame) -> str:
    if rows.empty:
        return NOT_RUN
    row = rows.iloc[0]
    return speed_cell(row) + (" (busy machine)" if is_true(row.get("busy")) else "")


def equal_cell(row: pd.Series) -> str:
    """yes / no, and where outputs part from full's: how many prompts differ, the first differing
    prompt and output position, and full's logit margin there (a near-tie in half precision reads
    as a margin near 0; a large one as a bug). "—" where not checked."""
    equal = row.get("outputs_equal_full")
    if not isinstance(equal, bool | np.bool_):
        return "—"
    if equal:
        return "yes"
    parts = []
    if pd.notna(row.get("prompts_differing")):
        parts.append(f"{_num(row['prompts_differing'], '.0f')} prompt(s) differ")
    if pd.notna(row.get("first_divergence_prompt")):
        where = f"first at prompt {_num(row['first_divergence_prompt'], '.0f')}"
        if pd.notna(row.get("first_divergence_position")):
            where += f", token {_num(row['first_divergence_position'], '.0f')}"
        parts.append(where)
    if pd.notna(row.get("divergence_margin")):
        parts.append(f"full's logit margin there {_num(row['divergence_margin'], '.3g')}")
    return "no" + (": " + ", ".join(parts) if parts else "")


def flops_cell(row: pd.Series) -> str:
    """Decode FLOPs per token over full's (``0.62×``); "—" where not recorded."""
    value = row.get("flops_ratio")
    return f"{_num(value, '.2f')}×" if pd.notna(value) else "—"


def detail_table(wf: pd.DataFrame) -> str:
    """Per run and workload: decode speedup, tokens/s and latencies beside full's, acceptance under
    both definitions, whether the outputs equal full's (where not: where they part), decode FLOPs
    per token over full's (a column only where some run records it, so older results read as
    they did), and how many paired samples were timed."""
    flops = has_flops(wf)
    header = ["workload", "model", "run", "KV", ARCH_HEADER, "decode speedup [95% CI]", "tok/s (full)"]
    header += ["TTFT ms (full)"]
    header += ["TPOT ms (full)", "acceptance", "acceptance (demo)", "outputs = full"]
    header += ["FLOPs ratio", "samples"] if flops else ["samples"]
    rows = []
    for workload in workload_order(wf):
        for _, r in run_order(wf[wf["workload"] == workload]).iterrows():
            cells = [
                workload,
                _text(r["model"]),
                *_run_cells(r)[2:],
                speedup_cell(decode_row(r)),
                f"{_num(r['tokens_per_s'], '.1f')} ({_num(r['full_tokens_per_s'], '.1f')})",
                f"{_num(r['ttft_ms'], '.1f')} ({_num(r['full_ttft_ms'], '.1f')})",
                f"{_num(r['tpot_ms'], '.2f')} ({_num(r['full_tpot_ms'], '.2f')})",
                _num(r["acceptance_rate"], ".3f"),
                _num(r["acceptance_rate_demo"], ".3f"),
                equal_cell(r),
            ]
            cells += [flops_cell(r)] if flops else []
            rows.append([*cells, _num(r["timing_samples"], ".0f")])
    return markdown_table(header, rows)


def has_flops(wf: pd.DataFrame) -> bool:
    """Whether any run records a FLOPs ratio per workload (records before it did not)."""
    return "flops_ratio" in wf and bool(pd.to_numeric(wf["flops_ratio"], errors="coerce").notna().any())


BASELINE_HEADER = ["workload", "model", "device", "baseline", "settings", "speedup [95% CI]"]
BASELINE_HEADER += ["decode speedup [95% CI]", "acceptance", "tok/pass", "outputs = full", "FLOPs ratio"]
BASELINE_HEADER += ["quality (headline)", "measured by"]


def settings_cell(settings: object) -> str:
    """A baseline's settings as ``key=value`` pairs; long values (fingerprints) cut to 16 characters."""
    if not isinstance(settings, dict) or not settings:
        return "—"
    cut = {k: (str(v) if len(str(v)) <= 16 else str(v)[:16] + "…") for k, v in settings.items()}
    return _text(", ".join(f"{k}={v}" for k, v in cut.items()))


def measured_by_cell(row: pd.Series) -> str:
    """Which run's measurement stands for the baseline, and out of how many runs that measured it."""
    text = f"{_text(row['run_name'])} (newest of {_num(row['runs_measured'], '.0f')} run(s)"
    if row.get("busy_runs", 0):
        text += f", {_num(row['busy_runs'], '.0f')} busy"
    if is_true(row.get("settings_vary")):
        text += ", settings differed between them"
    text += ")"
    return text + ("; busy machine: no steady run measured it" if is_true(row.get("busy")) else "")


def baseline_table(wf: pd.DataFrame, refs: pd.DataFrame) -> str:
    """Per workload, each baseline's reference: speed and decode speed with their intervals,
    acceptance, accepted tokens per pass, equality with full's outputs, FLOPs ratio, its quality on
    the workload's headline metric beside full's, and which run measured it."""
    rows = []
    for workload in workload_order(wf):
        metric = headline_metric(wf, workload)
        for _, r in baseline_order(refs[refs["workload"] == workload]).iterrows():
            device = r["device_name"] if pd.notna(r.get("device_name")) else r.get("device")
            quality = "—" if metric is None else f"{metric}: {quality_cell(r, metric)}"
            rows.append(
                [
                    workload,
                    _text(r["model"]),
                    _text(device),
                    baseline_run_cell(r).removeprefix("baseline: "),
                    settings_cell(r["settings"]),
                    speedup_cell(r),
                    speedup_cell(decode_row(r)),
                    _num(r["acceptance_rate"], ".3f"),
                    _num(r["mean_accepted_tokens"], ".1f"),
                    equal_cell(r),
                    flops_cell(r),
                    quality,
                    measured_by_cell(r),
                ]
            )
    return markdown_table(BASELINE_HEADER, rows)


def alternatives_sentence(wf: pd.DataFrame, refs: pd.DataFrame) -> str:
    """Per workload (and model, device, timing where several): the fastest baseline beside our
    fastest mode, both off a busy machine, and by how much one is ahead, from the records."""
    steady = refs[~refs["busy"].astype(bool) & np.isfinite(refs["speedup"].astype(float))]
    ours = wf[(wf["mode"] != "full") & ~wf["busy"].astype(bool) & np.isfinite(wf["speedup"].astype(float))]
    keys = ["model", "device", "timing"]
    several = len(refs.drop_duplicates(keys)) > 1
    parts = []
    for workload in workload_order(wf):
        alts = steady[steady["workload"] == workload]
        for _, alt_group in alts.groupby(keys, sort=False, dropna=False):
            first = alt_group.iloc[0]
            where = f"`{workload}`" + (
                f" ({first['model']}, {first['device']}, {first['timing']})" if several else ""
            )
            alt = alt_group.loc[alt_group["speedup"].astype(float).idxmax()]
            mine = ours[(ours["workload"] == workload) & _matches(ours, first, keys)]
            alt_words = f"{alt['label']} at {speedup_cell(alt)}"
            if mine.empty:
                parts.append(
                    f"{where}: fastest alternative {alt_words}; no mode of ours timed it off a busy machine"
                )
                continue
            best = mine.loc[mine["speedup"].astype(float).idxmax()]
            lossy = "" if is_true(best["lossless"]) else " (lossy)"  # the alternatives are greedy-exact
            our_words = f"{best['name']}{lossy} at {speedup_cell(best)}"
            a, b = float(alt["speedup"]), float(best["speedup"])
            if round(a / b - 1, 2) == 0:
                text = f"{where}: fastest alternative {alt_words}, as fast as our best mode, {our_words}"
            elif a > b:
                text = (
                    f"{where}: fastest alternative {alt_words}, {a / b - 1:.0%} faster than our best mode, "
                )
                text += our_words
            else:
                text = f"{where}: our best mode, {our_words}, is {b / a - 1:.0%} faster than the fastest "
                text += f"alternative, {alt_words}"
            parts.append(text + _overlap(alt, best))
    if not parts:
        return ""
    return (
        "Fastest alternative against our best mode, per workload (busy runs left out): "
        + "; ".join(parts)
        + "."
    )


def _matches(rows: pd.DataFrame, like: pd.Series, keys: list[str]) -> pd.Series:
    """Rows equal to ``like`` on every key (NaN matching NaN: a device name not recorded)."""
    mask = pd.Series(True, index=rows.index)
    for key in keys:
        value = like.get(key)
        mask &= rows[key].isna() if pd.isna(value) else rows[key].eq(value)
    return mask


def _overlap(a: pd.Series, b: pd.Series) -> str:
    """Whether two speedups' 95% intervals overlap, in words ("" where either has none)."""
    ends = [
        a.get("speedup_ci_low"),
        a.get("speedup_ci_high"),
        b.get("speedup_ci_low"),
        b.get("speedup_ci_high"),
    ]
    if any(pd.isna(e) for e in ends):
        return ""
    overlap = float(ends[0]) <= float(ends[3]) and float(ends[2]) <= float(ends[1])
    return " (95% intervals overlap: not told apart)" if overlap else " (95% intervals apart)"


def decode_row(row: pd.Series) -> pd.Series:
    """The decode speedup and its interval under the names ``speedup_cell`` reads."""
    names = ("speedup", "speedup_ci_low", "speedup_ci_high")
    return pd.Series({"mode": row.get("mode"), **{n: row[f"decode_{n}"] for n in names}})


def best_runs(wf: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """Per workload, the fastest run other than full that was not on a busy machine."""
    out = []
    for workload in workload_order(wf):
        rows = wf[(wf["workload"] == workload) & (wf["mode"] != "full") & ~wf["busy"].astype(bool)]
        rows = rows[np.isfinite(rows["speedup"].astype(float))]
        if not rows.empty:
            out.append((workload, rows.loc[rows["speedup"].astype(float).idxmax()]))
    return out


def spread_sentence(wf: pd.DataFrame) -> str:
    """The best speedup on each workload and, with two or more, the range between workloads."""
    best = best_runs(wf)
    if not best:
        return "No run other than full, off a busy machine, has a speedup on any workload."
    each = "; ".join(f"`{w}` {r['speedup']:.2f}× ({r['name']})" for w, r in best)
    text = f"Best measured speedup per workload (busy runs left out): {each}."
    if len(best) > 1:
        low, high = min(best, key=lambda b: b[1]["speedup"]), max(best, key=lambda b: b[1]["speedup"])
        text += (
            f" The best run's speedup ranges from {low[1]['speedup']:.2f}× on `{low[0]}` to "
            f"{high[1]['speedup']:.2f}× on `{high[0]}`: read each workload's column on its own."
        )
    return text


def speed_section(df: pd.DataFrame) -> str:
    """The Spec-Bench-style table with its reading rules, the per-workload detail table."""
    wf = workload_frame(df)
    if wf.empty:
        return (
            "No run records per-workload results (all records predate generation workloads); the "
            "Measured table below has each run's speed."
        )
    order = workload_order(wf)
    info = {w: workload_info(wf, w) for w in order}
    described = "; ".join(
        f"`{w}` ({i['domain']}, {i['prompts']}" + (f", from {i['source']}" if i["source"] else "") + ")"
        for w, i in info.items()
    )
    notes = [f"`{w}`: {i['note']}" for w, i in info.items() if i["note"]]
    intro = (
        f"{wf['run_id'].nunique()} run(s) timed full decoding and their own mode side by side on the "
        f"same generations of {len(order)} workload(s): {described}. Speedup = end-to-end (prefill + "
        "decode) tokens/s of the mode over full's on those generations, with a paired bootstrap 95% "
        "interval in brackets, the number Spec-Bench and LayerSkip report (they give means without "
        "an interval); tok/pass = mean accepted tokens per full-depth pass (Spec-Bench's #MAT; full: "
        "1.0; early-exit has no verification pass and shows none); overall pools every workload's "
        f"samples; {NOT_RUN} = the run did not time that workload."
    )
    refs = reference_baselines(baseline_frame(df))
    overall_refs = reference_baselines(baseline_overall_frame(df))
    parts = [intro + (" " + BASELINES_INTRO if not refs.empty else ""), spread_sentence(wf)]
    alternatives = alternatives_sentence(wf, refs) if not refs.empty else ""
    if alternatives:
        parts.append(alternatives)
    if notes:
        parts.append("Notes: " + "; ".join(notes) + ".")
    flops_words = "decode FLOPs per token over full's, " if has_flops(wf) else ""
    parted = wf["prompts_differing"].notna().any() or (
        not refs.empty and refs["prompts_differing"].notna().any()
    )
    divergence_words = (
        " (where not: how many prompts differ, where the first parts and full's top-1 minus top-2 "
        "logit there)"
        if parted
        else ""
    )
    parts += [
        speed_table(wf, overall_frame(df), refs, overall_refs),
        "Per workload: decode speedup (time per output token after the first), tokens/s, time to "
        "first token and per output token beside full's (in brackets), acceptance over head drafts "
        "only and with full-model tokens counted as drafts (as the public DSSD demo counts), whether "
        f"the outputs equal full's{divergence_words}, {flops_words}and the paired samples timed.",
        detail_table(wf),
    ]
    if not refs.empty:
        parts += [
            "Baselines per workload: the reference measurement of each (the newest run's off a busy "
            "machine; `measured by` names it and counts the runs that measured it), against that "
            "run's own full.",
            baseline_table(wf, refs),
        ]
    return "\n\n".join(parts)


BASELINES_INTRO = (
    "Rows named `baseline: …` are what a user could run instead, timed in the same protocol beside "
    "full in the same runs: transformers' greedy generate, draft-model assisted decoding, prompt "
    "lookup and transformers' own LayerSkip. Every run that lists one measures it again against its "
    "own full; each row shows one measurement per model, device, dtype and timing regime, the newest "
    "off a busy machine (the baseline table below names it and counts the others)."
)


# ---------------------------------------------------------------- quality per workload


def quality_columns(wf: pd.DataFrame) -> list[tuple[str, str]]:
    """(workload, metric) pairs that some run scored, workloads in order, metrics as recorded."""
    pairs = []
    for workload in workload_order(wf):
        for metrics in wf.loc[wf["workload"] == workload, "metrics"]:
            pairs += [(workload, m) for m in metrics if (workload, m) not in pairs]
    return pairs


def quality_cell(row: pd.Series | None, metric: str) -> str:
    """``0.412 (full 0.430) Δ -0.018 [-0.040, +0.002]``; full's own row: ``0.430 (baseline)``."""
    if row is None:
        return NOT_RUN
    ours = row.get(f"quality.{metric}")
    if pd.isna(ours):
        return "—"
    if row.get("mode") == "full":
        return f"{_num(ours, '.3f')} (baseline)"
    low, high = row.get(f"quality_delta_ci_low.{metric}"), row.get(f"quality_delta_ci_high.{metric}")
    interval = f" [{_num(low, '+.3f')}, {_num(high, '+.3f')}]" if pd.notna(low) and pd.notna(high) else ""
    full = _num(row.get(f"quality_full.{metric}"), ".3f")
    return f"{_num(ours, '.3f')} (full {full}) Δ {_num(row.get(f'quality_delta.{metric}'), '+.3f')}{interval}"


def quality_table(wf: pd.DataFrame, pairs: list[tuple[str, str]]) -> str:
    """Rows: runs; columns: each (workload, metric) with the direction that is better."""
    runs = run_order(wf.drop_duplicates("run_id"))
    header = list(RUN_HEADER)
    for workload, metric in pairs:
        arrow = "↑" if higher_is_better(wf[wf["workload"] == workload], metric) else "↓"
        header.append(f"{column_header(wf, workload)}: {metric} {arrow}")
    rows = []
    for _, run in runs.iterrows():
        mine = wf[wf["run_id"] == run["run_id"]].set_index("workload")
        cells = [quality_cell(mine.loc[w] if w in mine.index else None, m) for w, m in pairs]
        rows.append([*_run_cells(run), *cells])
    return markdown_table(header, rows)


def largest_loss(wf: pd.DataFrame, pairs: list[tuple[str, str]]) -> str:
    """The largest quality loss against full over all runs and metrics, in words."""
    worst: tuple[float, str] | None = None
    for workload, metric in pairs:
        rows = wf[(wf["workload"] == workload) & (wf["mode"] != "full")]
        sign = 1.0 if higher_is_better(rows, metric) else -1.0
        for _, r in rows.iterrows():
            loss = -sign * float(r.get(f"quality_delta.{metric}", np.nan))
            if np.isfinite(loss) and (worst is None or loss > worst[0]):
                words = f"{r['name']} on `{workload}` ({metric} Δ {r[f'quality_delta.{metric}']:+.3f})"
                worst = (loss, words)
    if worst is None:
        return "No run other than full has a quality Δ."
    if worst[0] <= 0:
        return "No run scored below full on any metric."
    return f"Largest quality loss against full: {worst[1]}."


def quality_section(df: pd.DataFrame) -> str:
    """Quality per workload and metric beside full's, with the paired delta interval."""
    wf = workload_frame(df)
    pairs = quality_columns(wf)
    if wf.empty:
        return "No per-workload results."
    if not pairs:
        names = ", ".join(f"`{w}`" for w in workload_order(wf))
        return f"No workload recorded a quality metric (speed only: {names})."
    without = [w for w in workload_order(wf) if headline_metric(wf, w) is None]
    intro = (
        f"{len(pairs)} quality metric(s) on {len(unique(w for w, _ in pairs))} workload(s), scored on "
        "the very generations that were timed: the mode's score, full's in brackets, and Δ = mode − "
        "full with a paired bootstrap 95% interval over prompts (lossless modes that reproduced "
        "full's outputs: Δ 0 [0, 0]); ↑ higher is better, ↓ lower."
    )
    if without:
        intro += " Speed only (no quality metric): " + ", ".join(f"`{w}`" for w in without) + "."
    return "\n\n".join([intro, largest_loss(wf, pairs), quality_table(wf, pairs)])


# ---------------------------------------------------------------- speed-quality fronts, listed


def _point(row: pd.Series) -> str:
    return f"{row['name']} ({row['x']:.2f}×, {row['y']:.3f})"


def fronts_section(df: pd.DataFrame, written: dict[str, list[Path]], skipped: dict[str, str]) -> str:
    """Per workload: its figure, the front points (labelled there) and every other point (not
    labelled there, so named here), busy runs apart."""
    wf = workload_frame(df)
    if wf.empty:
        return "No per-workload results: no speed-quality figure per workload."
    refs = reference_baselines(baseline_frame(df))
    lines = []
    for workload in workload_order(wf):
        name = file_name(workload)
        metric = headline_metric(wf, workload)
        if metric is None:
            lines.append(f"- `{workload}`: no figure ({skipped.get(name, 'no quality metric')}).")
            continue
        links = ", ".join(f"[{p.suffix[1:]}]({p.name})" for p in written.get(name, []))
        points = speed_quality_points(wf, workload, metric)
        several = len(unique(points["model"])) > 1
        groups = []
        for label, rows in (
            ("on the front (labelled)", points[points["on_front"]]),
            ("off the front", points[~points["on_front"] & ~points["busy"].astype(bool)]),
            ("busy machine, left off the front", points[points["busy"].astype(bool)]),
        ):
            if not rows.empty:
                named = ", ".join(
                    (f"{r['model']}: " if several else "") + _point(r) for _, r in rows.iterrows()
                )
                groups.append(f"{label}: {named}")
        references = baseline_order(reference_points(refs, workload, metric))
        if not references.empty:
            named = ", ".join(
                (f"{r['model']}: " if several else "")
                + _point(r.rename({"label": "name"}))
                + (" (busy machine)" if r["busy"] else "")
                for _, r in references.iterrows()
            )
            groups.append(f"baselines (references, on no front): {named}")
        lines.append(f"- `{workload}` ({links or 'not drawn'}), y = {metric}: " + "; ".join(groups) + ".")
    return "Each point is (speedup on the workload, quality).\n\n" + "\n".join(lines)


# ---------------------------------------------------------------- published generation numbers beside ours

# Published task (published.csv) -> (our workload with that task, how the prompt format compares).
GENERATION_TASKS: dict[str, tuple[str | None, str]] = {
    "CNN/DM 1-shot": ("cnn_dm_layerskip", "same: LayerSkip's 1-shot CNN/DM prompt"),
    "XSUM 0-shot": ("xsum_layerskip", "same: LayerSkip's 0-shot XSUM prompt"),
    "HumanEval": ("humaneval", "same: HumanEval's prompts"),
    "TOPv2": ("topv2", "TOPv2's own (no TOPv2 workload in this project yet)"),
    "TOPv2, CNN/DM": ("cnn_dm_layerskip", "CNN/DM part only; TOPv2 has no workload here"),
    "CNN/DM": (
        "cnn_dm_layerskip",
        "different: CALM fine-tunes T5 on CNN/DM; ours prompts LayerSkip's 1-shot",
    ),
    "summarisation": (None, "unknown: the post names no data set or prompt format"),
    # DEL's abstract names no task: beside it, our runs' speedup pooled over every workload.
    "several (not named in the abstract)": (
        OVERALL,
        "unknown: the abstract names no task; ours pooled over every workload the run timed",
    ),
}
# The mode of ours nearest to each paper's method (others: our lossless self-speculative modes).
METHOD_MODES = {"2404.16710": ("layerskip",), "2207.07061": ("early-exit",), "2504.05598": ("del",)}
SELF_SPECULATIVE = ("layerskip", "dssd", "del")
SPEED_METRICS = ("speedup", "speedup_estimated")


def _our_reading(rows: pd.DataFrame, modes: tuple[str, ...], metric: str) -> tuple[str, str, str]:
    """(our speedup cell, our acceptance cell, which run) for one published row on one workload."""
    if rows.empty:
        return NOT_RUN, NOT_RUN, "no record has this workload"
    mine = rows[rows["mode"].isin(modes)]
    if mine.empty:
        return "—", "—", f"workload run, but no {'/'.join(modes)} run on it"
    steady = mine[~mine["busy"].astype(bool)]
    pool, tag = (steady, "") if not steady.empty else (mine, " (busy machine: unreliable)")
    if metric not in (*SPEED_METRICS, "acceptance"):
        return "—", "—", f"not measured here ({metric})"
    key = "acceptance_rate" if metric == "acceptance" else "speedup"
    values = pool[key].astype(float)
    if not np.isfinite(values).any():
        return "—", "—", f"no {key} recorded"
    best = pool.loc[values.idxmax()]
    acceptance = _num(best["acceptance_rate"], ".3f")
    if pd.notna(best["acceptance_rate_demo"]):
        acceptance += f" (demo count {_num(best['acceptance_rate_demo'], '.3f')})"
    return speed_cell(best), acceptance, f"best {key}: {best['name']}{tag}"


def _hardware(part: pd.DataFrame) -> list[str]:
    """Our devices: ``env.device`` with its name where recorded."""
    out = []
    for _, r in part.drop_duplicates(["device", "device_name"]).iterrows():
        name = _text(r["device"]) + (f" ({r['device_name']})" if pd.notna(r.get("device_name")) else "")
        out.append(name)
    return out


def _workload_cell(workload: str | None) -> str:
    if workload is None:
        return "—"
    return "all workloads, pooled" if workload == OVERALL else f"`{workload}`"


def pooled_rows(df: pd.DataFrame, wf: pd.DataFrame) -> pd.DataFrame:
    """Each run's pooled ("overall") speed with the run's model, name and busy flag, in the shape
    ``_our_reading`` reads (no acceptance is pooled: NaN)."""
    overall = overall_frame(df)
    runs = wf.drop_duplicates("run_id")[["run_id", "model", "name", "busy"]] if not wf.empty else None
    if runs is None or overall.empty:
        columns = ["run_id", "mode", "model", "name", "busy", "speedup", "acceptance_rate"]
        return pd.DataFrame(columns=[*columns, "acceptance_rate_demo"])
    pooled = overall.merge(runs, on="run_id", how="inner")
    return pooled.assign(acceptance_rate=np.nan, acceptance_rate_demo=np.nan)


def published_generation_rows(df: pd.DataFrame, published: pd.DataFrame) -> list[list[str]]:
    """One row per (published row naming a generation task, our model)."""
    wf = workload_frame(df)
    pooled = pooled_rows(df, wf)
    rows = []
    for _, pub in published[published["task"].isin(GENERATION_TASKS)].iterrows():
        workload, prompt = GENERATION_TASKS[pub["task"]]
        modes = METHOD_MODES.get(pub["arxiv_id"], SELF_SPECULATIVE)
        for model in unique(df["model"]):
            part = df[df["model"] == model]
            devices = _hardware(part)
            if workload is None:
                ours = ("—", "—", "no workload matches: the source names no data set")
            elif workload == OVERALL:
                mine = pooled[(pooled["model"] == model) & pooled["mode"].isin(modes)]
                missing = ("—", "—", f"no {'/'.join(modes)} run with pooled results")
                ours = _our_reading(mine, modes, pub["metric"]) if not mine.empty else missing
            else:
                mine = wf[(wf["model"] == model) & (wf["workload"] == workload)] if not wf.empty else wf
                ours = _our_reading(mine, modes, pub["metric"])
            match = (
                f"model {model_match(pub['model'], model)}, "
                f"hardware {hardware_match(pub['hardware'], devices)}; prompt format: {prompt}"
            )
            rows.append(
                [
                    f"{_text(pub['paper'])} ({_text(pub['table_or_figure'])})",
                    f"{_text(pub['model'])} · {_text(pub['hardware'])}",
                    _text(pub["task"]),
                    _text(pub["metric"]),
                    _num(pub["value"], "g"),
                    _workload_cell(workload),
                    f"{_text(model)} · {', '.join(devices) or '?'}",
                    *ours,
                    match,
                ]
            )
    return rows


def published_generation_section(df: pd.DataFrame, published: pd.DataFrame) -> str:
    """Every published generation-task number beside ours on the same task and prompt format."""
    rows = published_generation_rows(df, published)
    header = ["published", "their model · hardware", "task", "metric", "value", "our workload"]
    header += ["our model · hardware", "our speedup [95% CI]", "our acceptance", "our run", "match"]
    intro = (
        "Every published row that names a generation task, beside our number on the workload with "
        "that task and prompt format (LayerSkip rows: our best LayerSkip run; CALM: our best "
        "early-exit run; DEL: our best DEL run, pooled over all workloads since its abstract names "
        "no task; busy runs only where nothing else ran). Models and hardware differ, and "
        f"each row names both: the same measurement on another model and machine, not a replication. "
        f"`{NOT_RUN}` = no record has that workload. " + CAVEATS
    )
    return "\n\n".join([intro, markdown_table(header, rows)])
