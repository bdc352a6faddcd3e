"""``summary.md``: the measured results as one table, and published numbers beside them.

Why markdown: it reads in a terminal, renders on GitHub and diffs cleanly between result sets. The
published comparison states for every row whether model and task match, because on different
models, tasks and hardware a number beside ours is context, not a replication.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.acceptance import exclusion_note
from analysis.load import THRESHOLD_MODES, StoreCounts, is_true, kv_strategy, unique
from analysis.measures import (
    MODE_ORDER,
    PREDICTION_BAND,
    depth_layers,
    prediction_error_by_mode,
    prediction_points,
    speedup_prediction_error,
)
from analysis.pareto import accuracy_axis, mark_fronts
from analysis.published import CAVEATS, compare, dssd_published_ratio, load_published

# CALM (arXiv 2207.07061): its numbers, model, task and depth all come from published.csv.
CALM_ARXIV = "2207.07061"


def _num(value: object, fmt: str) -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(v) else format(v, fmt)


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(value).replace("|", "\\|")


def speedup_cell(row: pd.Series) -> str:
    """The speedup and its paired bootstrap 95% interval where recorded, as 0.94× [0.88–1.01].

    The full model is the baseline (1× by definition, no interval); records from before the
    timing protocol show the bare ratio.
    """
    if pd.isna(row.get("speedup")):
        return "—"
    cell = _num(row["speedup"], ".2f") + "×"
    if row.get("mode") == "full":
        return cell + " (baseline)"
    low, high = row.get("speedup_ci_low"), row.get("speedup_ci_high")
    if pd.notna(low) and pd.notna(high):
        cell += f" [{_num(low, '.2f')}–{_num(high, '.2f')}]"
    return cell


def noise_cell(row: pd.Series) -> str:
    """≈ 1 where the interval contains 1.0 (not distinguishable from full), "no" where it does
    not, "—" where unknown (the baseline itself, records from before the timing protocol)."""
    value = row.get("within_noise")
    if row.get("mode") == "full" or not isinstance(value, bool | np.bool_):
        return "—"
    return "≈ 1" if value else "no"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# What a run is, as table columns: every table of runs names them the same way, in this order.
SETTING_HEADER = ["mode", "KV", "heads", "metric", "target", "E", "K"]


def setting_cells(row: pd.Series) -> list[str]:
    """The cells under ``SETTING_HEADER``: mode, KV strategy, heads, metric, target, LayerSkip's
    E and K; DEL's E is chosen per round ("adaptive") and its K is a cap (≤ ``mode.max_draft``)."""
    exit_layer, draft = _num(row["exit_layer"], ".0f"), _num(row["draft_length"], ".0f")
    if row["mode"] == "del":
        exit_layer, draft = "adaptive", "≤" + _num(row.get("max_draft"), ".0f")
    return [
        _text(row["mode"]),
        _text(row["kv"]),
        heads_cell(row),
        _text(row["metric"]),
        _num(row["target"], "g"),
        exit_layer,
        draft,
    ]


ARCH_HEADER = "head arch"


def arch_cell(row: pd.Series) -> str:
    """The exit heads' architecture (``config.heads.architecture``, with the rank of a low-rank
    head): two runs that differ only there would otherwise read as one row twice. "—" for full,
    which decodes without heads."""
    if row.get("mode") == "full":
        return "—"
    arch = row.get("heads")
    if not isinstance(arch, str):
        return "—"
    rank = row.get("head_rank")
    if isinstance(rank, int | float) and math.isfinite(rank) and rank > 0:
        arch += f" r={rank:g}"
    return _text(arch)


def heads_cell(row: pd.Series) -> str:
    """Which calibrated heads a thresholded run used: "all", or "priced: 1 5" (the heads kept by
    ``calibration.heads=priced``; "priced: none" when no head paid)."""
    if row.get("mode") not in THRESHOLD_MODES:
        return "—"
    if row.get("head_choice") != "priced":
        return "all"
    kept = row.get("heads_kept")
    kept = json.loads(kept) if isinstance(kept, str) else kept
    if not isinstance(kept, list):
        return "priced"
    return "priced: " + (" ".join(str(h) for h in kept) if kept else "none")


def front_cell(row: pd.Series) -> str:
    """✓ on the front; "busy machine" for a run left off every front because its timing is not
    trustworthy (so a blank never hides why)."""
    if is_true(row.get("busy")):
        return "busy machine"
    return "✓" if row["on_front"] else ""


def measured_table(df: pd.DataFrame) -> str:
    """One row per run: the mode's settings, speed, FLOPs, accuracy and acceptance."""
    y, _ = accuracy_axis(df)
    by = ["model", "timing"] if "timing" in df else ["model"]
    marked = mark_fronts(df, "speedup", y, by=by)
    marked = marked.assign(_order=df["mode"].map(MODE_ORDER), kv=kv_strategy(df))
    marked = marked.sort_values(
        [*by, "_order", "kv", "metric", "target", "exit_layer", "draft_length", "max_draft"]
    )
    header = [
        "model",
        *SETTING_HEADER,
        ARCH_HEADER,
        "speedup [95% CI]",
        "within noise",
        "FLOPs saved",
        "acc Δ",
        "agreement Δ",
        "acceptance",
        "acceptance (demo)",
        "held-out early exits",
        "on front",
        "device",
        "timing",
    ]
    rows = [
        [
            _text(r["model"]),
            *setting_cells(r),
            arch_cell(r),
            speedup_cell(r),
            noise_cell(r),
            _num(r["flops_saved"], "+.1%"),
            _num(r["acc_delta"], "+.3f"),
            _num(r["agreement_delta"], "+.3f"),
            _num(r["acceptance_rate"], ".3f"),
            _num(r["acceptance_rate_demo"], ".3f"),
            _num(r["exit_share"], ".1%"),
            front_cell(r),
            _text(r["device_name"] if pd.notna(r["device_name"]) else r["device"]),
            _text(r.get("timing", "eager")),
        ]
        for _, r in marked.iterrows()
    ]
    return markdown_table(header, rows)


def cost_model_section(df: pd.DataFrame) -> str:
    """Median |prediction error| per mode (each run's own point, and for ``full`` every run's
    baseline too), then each run's predicted vs measured time per token."""
    points = prediction_points(df)
    if points.empty:
        return "No run has a predicted time per token (records from before the cost model)."
    runs = df[np.isfinite(pd.to_numeric(df["predicted_tpot_ms"], errors="coerce"))]
    table = prediction_error_by_mode(points, runs=runs)
    header = [
        "model",
        "timing",
        "mode",
        "points",
        "median abs(prediction error)",
        f"within ±{PREDICTION_BAND:.0%}",
        "median abs(speedup error)",
    ]
    by_mode = [
        [
            _text(r["model"]),
            _text(r["timing"]),
            _text(r["mode"]),
            str(int(r["points"])),
            _num(r["median_abs_error"], ".1%"),
            _num(r["within_band"], ".0%"),
            _num(r["median_abs_speedup_error"], ".1%"),
        ]
        for _, r in table.iterrows()
    ]
    runs = runs.assign(_order=runs["mode"].map(MODE_ORDER), _speedup_error=speedup_prediction_error(runs))
    order = ["model", "timing", "_order", "kv", "metric", "target", "exit_layer", "draft_length"]
    runs = runs.sort_values(order)
    per_run = [
        [
            _text(r["model"]),
            _text(r["timing"]),
            *setting_cells(r),
            _num(r["tpot_ms_mean"], ".3f"),
            _num(r["predicted_tpot_ms"], ".3f"),
            _num(r["prediction_error"], "+.1%"),
            _num(r["full_tpot_ms_mean"], ".3f"),
            _num(r["full_predicted_tpot_ms"], ".3f"),
            _num(r["full_prediction_error"], "+.1%"),
            _num(r["predicted_speedup"], ".2f"),
            _num(r["full_tpot_ms_mean"] / r["tpot_ms_mean"], ".2f"),
            _num(r["_speedup_error"], "+.1%"),
            arch_cell(r),
        ]
        for _, r in runs.iterrows()
    ]
    run_header = [
        "model",
        "timing",
        *SETTING_HEADER,
        "measured ms/token (mean)",
        "predicted ms/token",
        "error",
        "full measured",
        "full predicted",
        "full error",
        "predicted speedup",
        "measured speedup (means)",
        "speedup error",
        ARCH_HEADER,
    ]
    intro = (
        "Each run's pass trace priced by the component profile measured on its own device "
        "(`earlyexit.measure.cost_model`), beside its measured mean time per output token; "
        "error = predicted / measured − 1. The `full` row counts every run's full baseline "
        f"(measured beside it) as well as the `full` runs. Target: median abs(error) ≤ {PREDICTION_BAND:.0%} "
        "per mode. "
        "The time error also carries the machine's drift between the profile's measurement and the "
        "run (the full baselines' own errors show it); the speedup error (predicted / measured "
        "speedup − 1, the mode and its baseline measured interleaved) cancels that drift and keeps "
        "what the cost model itself gets wrong. " + profile_sources(runs)
    )
    return "\n\n".join([intro, markdown_table(header, by_mode), markdown_table(run_header, per_run)])


def profile_sources(runs: pd.DataFrame) -> str:
    """How many runs were priced by a profile timed beside their own samples, how many by a
    cached one (records from before ``bench.profile`` used the cache)."""
    source = runs["profile_source"] if "profile_source" in runs else pd.Series("cached", index=runs.index)
    beside = int((source == "interleaved").sum())
    return (
        f"Profiles: {beside} run(s) timed their own beside their samples (`bench.profile=interleaved`), "
        f"{len(runs) - beside} used one measured once and cached (`bench.profile=cached`)."
    )


SOURCE_KIND_WORDS = {"primary": "paper's text", "abstract": "abstract only", "blog": "blog post"}


def _source(r: pd.Series) -> str:
    """Where a published number was read: paper, arXiv id and version, table, kind of source."""
    kind = SOURCE_KIND_WORDS.get(r["source_kind"], _text(r["source_kind"]))
    return (
        f"{_text(r['paper'])} (arXiv {r['arxiv_id']} {_text(r['paper_version'])}, "
        f"{_text(r['table_or_figure'])}; {kind})"
    )


def _published_model(r: pd.Series) -> str:
    setting = r["published_setting"]
    return _text(r["published_model"]) + (f" ({_text(setting)})" if setting else "")


def published_section(df: pd.DataFrame, published: pd.DataFrame) -> str:
    """Published values beside ours, a match verdict per row, the comparison caveats and a plain
    statement of the gaps."""
    table = compare(df, published)
    rows = [
        [
            _source(r),
            _published_model(r),
            _text(r["published_task"]),
            _text(r["published_hardware"]),
            _text(r["metric"]),
            _num(r["published"], "g"),
            _text(r["our_model"]),
            _num(r["measured"], ".3g"),
            _text(r["measured_what"]),
            f"model {r['model_match']}, task {r['task_match']}, hardware {r['hardware_match']}",
        ]
        for _, r in table.iterrows()
    ]
    header = [
        "published",
        "model",
        "task",
        "hardware",
        "metric",
        "value",
        "our model",
        "ours",
        "what we measured",
        "match",
    ]
    comparable = table[table["comparable"]]
    hardware = ", ".join(unique(table["our_hardware"])) or "unknown hardware"
    if comparable.empty:
        ours = ", ".join(map(str, unique(table["our_model"])))
        verdict = (
            "**No published number below matches our runs in both model and task**, so none of them is a "
            "replication target for these results. The published numbers are for other models, tasks and "
            "hardware (each row names them, as read in the source; `analysis/published.csv`); ours are "
            f"{ours} on {hardware}, with speed measured on held-out prompts of the model's own data. Read "
            "the values side by side as context for scale only."
        )
    else:
        names = "; ".join(f"{r['paper']} {r['metric']} on {r['our_model']}" for _, r in comparable.iterrows())
        verdict = (
            f"Model and task match for: {names}. Every other row differs in model or task (see the "
            "match column) and is context, not a replication."
        )
    return "\n\n".join([verdict, CAVEATS, acceptance_note(df, published), markdown_table(header, rows)])


def acceptance_note(df: pd.DataFrame, published: pd.DataFrame) -> str:
    """How the DSSD / LayerSkip ratios are taken, beside the published one (read from
    ``published``), and which DSSD runs were left out of them and why."""
    ratio = dssd_published_ratio(published)
    beside = f"the published {ratio:g}×" if math.isfinite(ratio) else "the published ratio"
    text = (
        'Acceptance is reported two ways (DESIGN.md, "The public DSSD demo, read closely"): over head '
        "drafts only, and with full-model tokens counted as accepted drafts, as the public DSSD demo "
        f"counts them; each DSSD / LayerSkip ratio beside {beside} (a ratio of acceptance rates, "
        "DSSD's own definition) names the definition it uses. A ratio is taken only between DSSD and "
        "LayerSkip runs on the same model, head architecture and workload, and only over DSSD runs "
        "that kept more than one head."
    )
    note = exclusion_note(df)
    return text + (" " + note if note else "")


def calm_sentence(published: pd.DataFrame) -> str:
    """CALM's layers per token and estimated speedup, with its model, task, hardware and table, all
    read from ``published`` (the depth from its setting, "8 decoder layers, ...")."""
    rows = published[published["arxiv_id"] == CALM_ARXIV]
    by_metric = {r["metric"]: r for _, r in rows.iterrows()}
    layers_row, speed_row = by_metric.get("layers_per_token"), by_metric.get("speedup_estimated")
    if layers_row is None or speed_row is None:
        return f"No CALM (arXiv {CALM_ARXIV}) layers-per-token row in the published table."
    layers, speedup = float(layers_row["value"]), float(speed_row["value"])
    match = re.search(r"(\d+) decoder layers", str(layers_row["setting"]))
    depth = f" of {match.group(1)} decoder layers" if match else ""
    share = f" ({layers / float(match.group(1)):.0%} of depth)" if match else ""
    return (
        f"CALM (arXiv {CALM_ARXIV}, {_text(layers_row['table_or_figure'])}) propagates an exited token's "
        f"state to the skipped layers' K/V: {layers:g}{depth} per token{share} and an *estimated* "
        f"×{speedup:g} on {_text(layers_row['model'])}, {_text(layers_row['task'])}, "
        f"{_text(layers_row['hardware'])}. Our `propagate` runs below differ in model, task and hardware, "
        "and our speedups are measured, not estimated: compare layers per token and FLOPs saved as "
        "scale, not as a replication."
    )


def flops_sentence(runs: pd.DataFrame) -> str:
    """What each KV strategy's early-exit runs save in FLOPs, as the records say (no strategy is
    assumed to save none): the range of ``metric.flops_saved`` per strategy."""
    parts = []
    for kv in unique(runs["kv"]):
        saved = pd.to_numeric(runs.loc[runs["kv"] == kv, "flops_saved"], errors="coerce").dropna()
        if saved.empty:
            parts.append(f"`{kv}`: not recorded")
            continue
        low, high = float(saved.min()), float(saved.max())
        span = f"{low:+.1%}" if low == high else f"{low:+.1%} to {high:+.1%}"
        parts.append(f"`{kv}` {span} ({len(saved)} run(s))")
    return (
        "FLOPs saved per emitted token against full (1 − the mode's counted FLOPs per token / full's; "
        "negative: more than full), per KV strategy in these records: " + "; ".join(parts) + "."
    )


def kv_section(df: pd.DataFrame, published: pd.DataFrame) -> str:
    """Early-exit runs per KV strategy (depth, FLOPs saved, accuracy, speed) beside CALM's
    layers per token (from `published`), the one published number for state propagation."""
    runs = df[df["mode"] == "early-exit"].assign(kv=kv_strategy(df))
    calm = calm_sentence(published)
    if runs.empty:
        return calm + "\n\nNo early-exit run in these results."
    runs = runs.sort_values(["model", "timing", "kv", "metric", "target"])
    header = ["model", "KV", ARCH_HEADER, "metric", "target", "layers/token", "share of depth"]
    header += ["FLOPs saved", "acc Δ", "agreement Δ", "speedup"]
    rows = [
        [
            _text(r["model"]),
            _text(r["kv"]),
            arch_cell(r),
            _text(r["metric"]),
            _num(r["target"], "g"),
            _num(r["layers_per_token"], ".2f"),
            _num(r["layers_per_token"] / depth_layers(r.get("model_shape")), ".0%"),
            _num(r["flops_saved"], "+.1%"),
            _num(r["acc_delta"], "+.3f"),
            _num(r["agreement_delta"], "+.3f"),
            _num(r["speedup"], ".2f") + "×",
        ]
        for _, r in runs.iterrows()
    ]
    return "\n\n".join([calm, flops_sentence(runs), markdown_table(header, rows)])


def figures_section(written: dict[str, list[Path]], skipped: dict[str, str], out_dir: Path) -> str:
    """Which figures were drawn (linked) and which were skipped, with the reason."""
    lines = []
    for name, paths in written.items():
        links = ", ".join(
            f"[{p.suffix[1:]}]({p.relative_to(out_dir) if p.is_relative_to(out_dir) else p})" for p in paths
        )
        lines.append(f"- {name}: {links}")
    lines += [f"- {name}: skipped ({reason})" for name, reason in skipped.items()]
    return "\n".join(lines) or "- none"


def write_summary(
    df: pd.DataFrame,
    out_dir: str | Path,
    source: str,
    written: dict[str, list[Path]] | None = None,
    skipped: dict[str, str] | None = None,
    published: pd.DataFrame | None = None,
    counts: StoreCounts | None = None,
) -> Path:
    """Write ``out_dir/summary.md`` and return its path; ``counts`` (``load.count_store``) says
    how many records the store held beside the runs in ``df``."""
    # Imported here: those sections build on this module's cells and tables.
    from analysis import accuracy_summary as acc
    from analysis import workload_summary as ws
    from analysis.batch_summary import batch_section

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    published = load_published() if published is None else published
    y, _ = accuracy_axis(df)
    axis = (
        "lm-eval accuracy Δ"
        if y == "acc_delta"
        else "agreement Δ, since no lossy run measured an lm-eval task (`task=none`)"
    )
    parts = [
        "# Results summary",
        f"{len(df)} run(s) from `{source}`, {len(unique(df['model']))} model(s). Speedup = full time per "
        "output token / mode's, medians over paired (prompt, repeat) samples measured interleaved with full, "
        "with a paired bootstrap 95% interval in brackets; within noise (≈ 1) = that interval contains 1. "
        "FLOPs saved = 1 − FLOPs per token ratio; acc Δ = lm-eval log-likelihood accuracy minus the "
        "full model's, mean over tasks (lossless modes: 0); agreement Δ = held-out token agreement with the "
        "full model − 1 (lossless modes: 0); held-out early exits = share of held-out tokens leaving before "
        'the last layer at the calibrated thresholds; "on front" = on the model\'s speed-accuracy Pareto '
        f"front, over all modes, with accuracy taken as {axis}; runs on a busy machine are on no front.",
        "## Records and machine load",
        ws.records_section(df, counts),
        "## Generation workloads: speedup and mean accepted tokens",
        ws.speed_section(df),
        "## Generation workloads: quality beside full",
        ws.quality_section(df),
        "## Generation workloads: speed–quality fronts",
        ws.fronts_section(df, written or {}, skipped or {}),
        "## Batch size: where the speedup stops paying",
        batch_section(df, written or {}),
        "## Log-likelihood tasks: accuracy only, no speedup",
        acc.loglikelihood_section(df),
        "## Measured",
        measured_table(df),
        "## Speed–accuracy figures: every point",
        acc.speed_accuracy_section(df, written or {}),
        "## Cost model: predicted vs measured",
        cost_model_section(df),
        "## Exited tokens' KV: fill, propagate, skip",
        kv_section(df, published),
        "## Published vs measured",
        published_section(df, published),
        "## Published generation results beside ours",
        ws.published_generation_section(df, published),
        "## Figures",
        figures_section(written or {}, skipped or {}, out),
    ]
    path = out / "summary.md"
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path
