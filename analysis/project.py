"""``python -m analysis.project --profile PROFILE.json``: stored runs re-priced with another profile.

Why: a run's pass trace records what it computed (layers, rows, heads, unembeddings) as counts,
so pricing the same trace with a component profile measured elsewhere (a GPU, another dtype,
CUDA graphs) projects what that run would cost there without running it again. A projection is
a cost model's answer, not a measurement: every column, title and file name here says
"projected", and nothing here is written into the measured records or ``summary.md``.

Runs are re-priced with ``earlyexit.measure.cost_model.predict``. A profile is only valid for runs
of its own model shape and head architecture (``CostProfile.check_prices``): runs of another are
skipped and named, and when no run matches the command refuses, naming both sides. Runs recorded
before pass traces existed are skipped with a note.

Batched runs (``bench.batch_size`` a list) also store, per batch size B, the whole batch's pass
trace of their first workload and full's (``metric.batch.<B>.trace``, ``full_trace``) with the
output tokens after each sequence's first summed over the batch; each B is priced the same way,
giving a projected speedup per B on the profile's device (``Projection.batch``): where on that
device the mode would stop paying. A batch wider than the rows the profile timed is priced by
the profile's linear extension past its last row, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.batches import trace_sizes
from analysis.load import (
    COST_CATEGORIES,
    DEFAULT_STORE,
    THRESHOLD_MODES,
    kv_strategy,
    latest_per_config,
    load_results,
)
from analysis.measures import MODE_ORDER
from analysis.pareto import run_name
from analysis.summary import (
    ARCH_HEADER,
    SETTING_HEADER,
    _num,
    _text,
    arch_cell,
    markdown_table,
    setting_cells,
)
from earlyexit.harness.results import EmptyResultsError
from earlyexit.measure.cost_model import predict
from earlyexit.measure.profile import CostProfile
from earlyexit.model.trace import TraceCounts

log = logging.getLogger("analysis.project")

# Run identity columns carried into the projected table (never a measured number).
ID_COLUMNS = (
    "run_id",
    "model",
    "mode",
    "kv",
    "metric",
    "target",
    "exit_layer",
    "draft_length",
    "heads",
    "head_choice",
    "timing",
)
PROJECTED_COLUMNS = (
    "projected_tpot_ms",
    "projected_full_tpot_ms",
    "projected_speedup",
    *(f"projected_time_ms.{c}" for c in COST_CATEGORIES),
)
# Per run and batch size: the projection of the whole batch's trace, and how wide it was (the
# most rows any pass ran at once) against the widest the profile timed.
BATCH_COLUMNS = (
    "batch_size",
    "projected_tpot_ms",
    "projected_full_tpot_ms",
    "projected_speedup",
    "trace_rows",
    "extrapolated",
)


class ProjectionRefused(ValueError):
    """The profile cannot price any of the stored runs (the message names why, both sides)."""


@dataclass
class Projection:
    """Projected numbers per run, and the runs left out with the reason for each."""

    table: pd.DataFrame
    profile: CostProfile
    # One row per run x batch size (``ID_COLUMNS`` + ``BATCH_COLUMNS``); empty without batched runs.
    batch: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[*ID_COLUMNS, *BATCH_COLUMNS]))
    no_trace: list[str] = field(default_factory=list)
    mismatched: dict[str, list[str]] = field(default_factory=dict)  # reason -> run labels
    unpriceable: dict[str, list[str]] = field(default_factory=dict)  # reason -> run labels

    def notes(self) -> list[str]:
        """One line per group of skipped runs, naming them."""
        lines = []
        if self.no_trace:
            lines.append(
                f"skipped {len(self.no_trace)} run(s) without a pass trace (recorded before the cost "
                f"model): {', '.join(self.no_trace)}"
            )
        for what, groups in (
            ("of another model shape or head architecture", self.mismatched),
            ("the profile cannot price", self.unpriceable),
        ):
            for reason, labels in groups.items():
                lines.append(f"skipped {len(labels)} run(s) {what} ({reason}): {', '.join(labels)}")
        return lines


def describe_run(row: pd.Series) -> str:
    """A run in a few words: series, target or (E, K), and the start of its run id."""
    run_id = row.get("run_id")
    return f"{row.get('model')} {run_name(row)}" + (f" [{run_id[:8]}]" if isinstance(run_id, str) else "")


def _trace(value: Any) -> TraceCounts | None:
    """The stored trace (a JSON string in the store), None where the record has none."""
    if isinstance(value, str) and value:
        value = json.loads(value)
    return TraceCounts.from_json(value) if isinstance(value, dict) else None


def _count(value: Any) -> int | None:
    number = pd.to_numeric(value, errors="coerce")
    return int(number) if np.isfinite(number) and number >= 1 else None


def _rank(row: pd.Series) -> int | None:
    rank = pd.to_numeric(row.get("head_rank"), errors="coerce")
    return int(rank) if np.isfinite(rank) else None


def project(df: pd.DataFrame, profile: CostProfile, allow_dtype_change: bool = False) -> Projection:
    """Each run's trace and its full baseline's, priced with ``profile``: projected ms per
    output token (total and per category) and projected speedup.

    Raises ``ProjectionRefused`` when runs with traces exist but none matches the profile's
    model shape and head architecture (the message names the profile's and the runs'), or when
    no run has a trace at all.
    """
    out = Projection(pd.DataFrame(columns=[*ID_COLUMNS, *PROJECTED_COLUMNS]), profile)
    rows = []
    order = df.assign(_order=df["mode"].map(MODE_ORDER), kv=kv_strategy(df)).sort_values(
        ["model", "timing", "_order", "kv", "metric", "target", "exit_layer", "draft_length"], kind="stable"
    )
    sizes = trace_sizes(df.columns)
    batch_rows = []
    for _, r in order.iterrows():
        label = describe_run(r)
        batches = _batch_traces(r, sizes, out, label)
        single: tuple | None = None
        try:
            trace, full_trace = _trace(r.get("trace")), _trace(r.get("full_trace"))
        except (ValueError, KeyError, TypeError) as err:
            out.unpriceable.setdefault(f"unreadable pass trace: {err!r}", []).append(label)
            if not batches:
                continue
        else:
            tokens, full_tokens = _count(r.get("decode_tokens")), _count(r.get("full_decode_tokens"))
            if all(v is not None for v in (trace, full_trace, tokens, full_tokens)):
                single = (trace, full_trace, tokens, full_tokens)
            elif not batches:
                out.no_trace.append(label)
                continue
        shape = r.get("model_shape")
        if not isinstance(shape, str):
            out.no_trace.append(label)
            continue
        try:
            profile.check_prices(shape, str(r.get("heads")), _rank(r))
            _check_dtype(profile, r.get("dtype"), allow_dtype_change)
        except ValueError as err:
            out.mismatched.setdefault(str(err), []).append(label)
            continue
        metric = r.get("metric") if isinstance(r.get("metric"), str) else None
        if metric is None and r["mode"] in THRESHOLD_MODES:
            out.unpriceable.setdefault("no confidence metric recorded", []).append(label)
            continue
        ids = {c: r.get(c) for c in ID_COLUMNS}
        if single is not None:
            try:
                mine, base = _price(*single, profile, str(r["mode"]), metric)
            except ValueError as err:  # a metric the profile did not time, a mode the model does not know
                out.unpriceable.setdefault(str(err), []).append(label)
                continue
            rows.append(
                {
                    **ids,
                    "projected_tpot_ms": mine["tpot_ms"],
                    "projected_full_tpot_ms": base["tpot_ms"],
                    "projected_speedup": base["tpot_ms"] / mine["tpot_ms"],
                    **{f"projected_time_ms.{c}": mine[c] for c in COST_CATEGORIES},
                }
            )
        for size, priced in batches.items():
            try:
                mine, base = _price(*priced, profile, str(r["mode"]), metric)
            except ValueError as err:
                out.unpriceable.setdefault(str(err), []).append(f"{label} at B = {size}")
                continue
            widest = max(_widest(priced[0]), _widest(priced[1]))
            batch_rows.append(
                {
                    **ids,
                    "batch_size": size,
                    "projected_tpot_ms": mine["tpot_ms"],
                    "projected_full_tpot_ms": base["tpot_ms"],
                    "projected_speedup": base["tpot_ms"] / mine["tpot_ms"],
                    "trace_rows": widest,
                    "extrapolated": widest > max(profile.rows),
                }
            )
    if rows or batch_rows:
        out.table = pd.DataFrame(rows, columns=[*ID_COLUMNS, *PROJECTED_COLUMNS])
        out.batch = pd.DataFrame(batch_rows, columns=[*ID_COLUMNS, *BATCH_COLUMNS])
        return out
    if out.mismatched:
        reasons = "; ".join(f"{reason} ({len(labels)} run(s))" for reason, labels in out.mismatched.items())
        raise ProjectionRefused(f"profile {profile_name(profile)} cannot price any stored run: {reasons}")
    if out.unpriceable:
        reasons = "; ".join(out.unpriceable)
        raise ProjectionRefused(f"profile {profile_name(profile)} cannot price any stored run: {reasons}")
    raise ProjectionRefused(
        f"none of the {len(df)} stored run(s) has a pass trace (all recorded before the cost model); "
        "re-run them to project them"
    )


def _batch_traces(
    r: pd.Series, sizes: list[int], out: Projection, label: str
) -> dict[int, tuple[TraceCounts, TraceCounts, int, int]]:
    """The run's priceable batch traces by B: (trace, full's trace, decoded tokens, full's). An
    unreadable trace, or one without its token counts, is noted as unpriceable at that B."""
    found = {}
    for size in sizes:
        base = f"metric.batch.{size}."
        raw = r.get(base + "trace")
        if not isinstance(raw, str | dict):
            continue
        try:
            trace, full_trace = _trace(raw), _trace(r.get(base + "full_trace"))
        except (ValueError, KeyError, TypeError) as err:
            out.unpriceable.setdefault(f"unreadable batch pass trace: {err!r}", []).append(
                f"{label} at B = {size}"
            )
            continue
        tokens, full_tokens = (
            _count(r.get(base + "decode_tokens")),
            _count(r.get(base + "full_decode_tokens")),
        )
        if any(v is None for v in (trace, full_trace, tokens, full_tokens)):
            reason = "batch trace without full's trace or a decoded-token count"
            out.unpriceable.setdefault(reason, []).append(f"{label} at B = {size}")
            continue
        found[size] = (trace, full_trace, tokens, full_tokens)
    return found


def _price(
    trace: TraceCounts,
    full_trace: TraceCounts,
    tokens: int,
    full_tokens: int,
    profile: CostProfile,
    mode: str,
    metric: str | None,
) -> tuple[dict[str, float], dict[str, float]]:
    """The run's trace priced as its mode, and its baseline's as ``full``."""
    return predict(trace, tokens, profile, mode, metric), predict(
        full_trace, full_tokens, profile, "full", metric
    )


def _widest(trace: TraceCounts) -> int:
    """The most rows any segment or unembedding of ``trace`` ran at once."""
    rows = [new + pending for (_, new, pending, *_rest) in trace.segments]
    return max([*rows, *trace.unembed], default=0)


def _check_dtype(profile: CostProfile, run_dtype: Any, allowed: bool) -> None:
    """A profile of another dtype prices other kernels: refused unless asked for explicitly."""
    mine = profile.identity.get("dtype")
    if allowed or not isinstance(run_dtype, str) or run_dtype == mine:
        return
    raise ValueError(
        f"dtype: profile {mine!r}, runs {run_dtype!r} (pass --allow-dtype-change to project runs "
        "onto a device that decodes in another dtype, e.g. CPU float32 runs onto a GPU float16 profile)"
    )


def profile_name(profile: CostProfile) -> str:
    """Where a profile was measured, in words: device, dtype and timing regime."""
    i = profile.identity
    regime = "CUDA graphs" if i.get("graphs") else "eager"
    device = i.get("device_name") or i.get("device") or "unknown device"
    return f"{device} ({i.get('dtype')}, {regime}; key {profile.key})"


def markdown(projection: Projection, profile_path: str | Path, source: str) -> str:
    """The projected table as a markdown page, titled and worded as a projection."""
    p = projection.profile
    header = [
        "model",
        *SETTING_HEADER,
        ARCH_HEADER,
        "traced with",
        "projected full ms/token",
        "projected ms/token",
        "projected speedup",
    ]
    rows = [
        [
            _text(r["model"]),
            *setting_cells(r),
            arch_cell(r),
            _text(r["timing"]),
            _num(r["projected_full_tpot_ms"], ".4f"),
            _num(r["projected_tpot_ms"], ".4f"),
            _num(r["projected_speedup"], ".2f") + "×",
        ]
        for _, r in projection.table.iterrows()
    ]
    parts = [
        f"# Projected time per token on {profile_name(p)}",
        f"Projected, not measured: each run's pass trace from `{source}` priced with the component "
        f"profile `{profile_path}` (model shape `{p.identity.get('model_shape')}`, "
        f"{p.identity.get('head_architecture')} heads) by `earlyexit.measure.cost_model`. "
        "`traced with` is the timing regime the run was recorded in (a graphed run's trace counts "
        "its KV buckets). Measured numbers are in `summary.md`, never here.",
        markdown_table(header, rows) if rows else "No run has a single-sequence pass trace.",
    ]
    if not projection.batch.empty:
        parts += ["## Projected per batch size", batch_markdown(projection)]
    notes = projection.notes()
    if notes:
        parts += ["## Not projected", "\n".join(f"- {n}" for n in notes)]
    return "\n\n".join(parts) + "\n"


def batch_markdown(projection: Projection) -> str:
    """The per-batch-size projection: one row per run and B, with where each run would stop
    paying on the profile's device (the smallest B whose projected speedup is below 1)."""
    widest = max(projection.profile.rows)
    header = ["model", *SETTING_HEADER, ARCH_HEADER, "traced with", "B"]
    header += ["projected full ms/token", "projected ms/token", "projected speedup", "widest pass (rows)"]
    rows = []
    stops = []
    for _, part in projection.batch.groupby("run_id", sort=False):
        part = part.sort_values("batch_size")
        for _, r in part.iterrows():
            wide = f"{int(r['trace_rows'])}" + (f" (> {widest}: extrapolated)" if r["extrapolated"] else "")
            rows.append(
                [
                    _text(r["model"]),
                    *setting_cells(r),
                    arch_cell(r),
                    _text(r["timing"]),
                    str(int(r["batch_size"])),
                    _num(r["projected_full_tpot_ms"], ".4f"),
                    _num(r["projected_tpot_ms"], ".4f"),
                    _num(r["projected_speedup"], ".2f") + "×",
                    wide,
                ]
            )
        first = part.iloc[0]
        if first["mode"] == "full":
            continue
        below = part.loc[part["projected_speedup"] < 1.0, "batch_size"]
        when = f"would stop paying at B = {int(below.iloc[0])}" if not below.empty else "would pay at every B"
        stops.append(f"- {describe_run(first)} {when} ({_sizes(part)}).")
    intro = (
        "Each batched run's whole-batch pass trace of its first workload and full's at each batch "
        "size B, priced with the same profile: ms per output token after each sequence's first, "
        f"summed over the batch, so the speedup is a throughput speedup. The profile timed up to "
        f"{widest} rows at once; a wider pass is priced by its linear extension past that."
    )
    return "\n\n".join([intro, "\n".join(stops), markdown_table(header, rows)])


def _sizes(part: pd.DataFrame) -> str:
    """``projected 1.20× at B = 1, 0.95× at B = 4``."""
    return "projected " + ", ".join(
        f"{r['projected_speedup']:.2f}× at B = {int(r['batch_size'])}" for _, r in part.iterrows()
    )


def fig_projected_batch_speedup(projection: Projection):
    """Projected throughput speedup per run against B (log2 axis), 1× marked; titled as a projection."""
    from analysis.batch_figures import _log2_axis
    from analysis.plotting import mode_color, panel_grid

    fig, (ax,) = panel_grid(1, width=8.5, height=4.6)
    for _, part in projection.batch.groupby("run_id", sort=False):
        part = part.sort_values("batch_size")
        first = part.iloc[0]
        (line,) = ax.plot(
            part["batch_size"], part["projected_speedup"], marker="o", color=mode_color(first["mode"])
        )
        line.set(label=describe_run(first), gid="projected")
    ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1)
    _log2_axis(ax, sorted(set(projection.batch["batch_size"].astype(int))))
    ax.set(xlabel="batch size B (log2)", ylabel="projected throughput speedup vs full at the same B")
    ax.set_title(
        f"Projected speedup per batch size (cost model, not measured)\non {profile_name(projection.profile)}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def fig_projected_speedup(projection: Projection):
    """Projected speedup per run (bars), 1× marked; the title says projected and on what."""
    from analysis.plotting import mode_color, panel_grid

    table = projection.table
    fig, (ax,) = panel_grid(1, width=8.5, height=1.8 + 0.35 * len(table))
    labels = [describe_run(r) for _, r in table.iterrows()]
    ys = np.arange(len(table))
    ax.barh(ys, table["projected_speedup"], color=[mode_color(m) for m in table["mode"]], gid="projected")
    ax.axvline(1.0, color="0.5", linestyle=":", linewidth=1)
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(
        xlabel="projected speedup vs full (projected time per output token)",
    )
    ax.set_title(
        f"Projected speedup (cost model, not measured)\non {profile_name(projection.profile)}", fontsize=9
    )
    return fig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.project", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="cost profile JSON (earlyexit.profile/1)")
    parser.add_argument("--results", type=Path, default=DEFAULT_STORE, help="JSON Lines results store")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    parser.add_argument("--all-repeats", action="store_true", help="keep every run of a repeated config")
    parser.add_argument(
        "--allow-dtype-change",
        action="store_true",
        help="price runs measured in another dtype (the trace is the same work; the kernels differ)",
    )
    return parser.parse_args(argv)


def load_profile(path: Path) -> CostProfile:
    """The profile at ``path``, or a ``ValueError`` saying in one line what is wrong with it."""
    if not path.is_file():
        raise ValueError(f"no cost profile at {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    sidecar = path.with_name(path.name.removesuffix(".json") + ".result.json")
    if isinstance(data, dict) and "identity" not in data and sidecar.is_file():
        raise ValueError(f"{path} is a cache identity file; the profile itself is {sidecar}")
    try:
        return CostProfile.from_json(data)
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: not a readable cost profile ({err})") from err


def main(argv: list[str] | None = None) -> int:
    """Project, print and write; exit status 2, one line on stderr, for nothing to project."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        profile = load_profile(args.profile)
        df = load_results(args.results)
        if not args.all_repeats:
            df = latest_per_config(df)
        projection = project(df, profile, args.allow_dtype_change)
    except (EmptyResultsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in projection.notes():
        print(f"note: {note}", file=sys.stderr)
    from analysis.plotting import save

    stem = f"projected-{args.profile.stem}"
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(projection, args.profile, str(args.results))
    (args.out / f"{stem}.md").write_text(text, encoding="utf-8")
    projection.table.to_csv(args.out / f"{stem}.csv", index=False)
    paths = [args.out / f"{stem}.md", args.out / f"{stem}.csv"]
    if not projection.table.empty:
        paths += save(fig_projected_speedup(projection), args.out, stem)
    if not projection.batch.empty:  # batched runs: the projection per batch size beside it
        projection.batch.to_csv(args.out / f"{stem}-batch.csv", index=False)
        paths.append(args.out / f"{stem}-batch.csv")
        paths += save(fig_projected_batch_speedup(projection), args.out, f"{stem}-batch")
    print(text)
    written = ", ".join(str(p) for p in paths)
    batched = projection.batch["run_id"].nunique()
    log.info(
        "projected %d run(s), %d batched run(s) per B; wrote %s", len(projection.table), batched, written
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
