"""analysis/: per-workload results (speed, accepted tokens, quality per generation workload), busy
machines, skipped records, log-likelihood accuracy and the published generation numbers beside ours,
all on synthetic records written with the runner's own record format (no model runs here)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from matplotlib.text import Annotation

from analysis.__main__ import main
from analysis.figures import FIGURES, make_all
from analysis.load import count_store, load_results
from analysis.pareto import mark_fronts
from analysis.published import load_published
from analysis.summary import write_summary
from analysis.workload_figures import fig_speed_quality, spread_labels
from analysis.workload_summary import LOGLIKELIHOOD_LABEL, published_generation_rows
from analysis.workloads import (
    headline_metric,
    speed_quality_points,
    workload_frame,
    workload_names,
    workload_order,
)
from earlyexit.harness.results import ResultStore, make_record

NAN = math.nan
ENV = {"device": "cuda", "device_name": "NVIDIA H200", "dtype": "float16"}
DOMAINS = {
    "stdlib_completion": ("Python code", 40),
    "cnn_dm_layerskip": ("English news", 20),
    "heldout": ("Python code", 16),
    "nq_open": ("English questions", 50),
}
# Full's quality per workload and metric; the first metric of each is its headline.
FULL_QUALITY = {
    "stdlib_completion": {"exact_match": 0.40, "edit_similarity": 0.70},
    "cnn_dm_layerskip": {"rouge2": 0.100},
    "nq_open": {"exact_match,remove_whitespace": 0.25},
    "heldout": {},
}


def workload_metrics(
    name: str,
    speedup: float,
    ci: tuple[float, float] = (NAN, NAN),
    mat: float = NAN,
    quality: dict[str, tuple[float, float, float]] | None = None,
    acceptance: tuple[float, float] = (NAN, NAN),
    equal: bool = False,
) -> dict:
    """One workload's metrics as the runner writes them (without the ``metric.`` prefix).

    ``quality``: metric -> (mode's score, delta CI low, delta CI high); full's score from
    FULL_QUALITY; a lossless run passes its full score and (0, 0).
    """
    domain, prompts = DOMAINS[name]
    base = f"workload.{name}."
    out = {
        base + "prompts": prompts,
        base + "domain": domain,
        base + "source": f"{name} source",
        base + "note": "code execution off" if name == "heldout" else "",
        base + "speedup": speedup,
        base + "speedup_ci_low": ci[0],
        base + "speedup_ci_high": ci[1],
        base + "decode_speedup": speedup * 1.1 if np.isfinite(ci[0]) else 1.0,
        base + "decode_speedup_ci_low": ci[0] * 1.1,
        base + "decode_speedup_ci_high": ci[1] * 1.1,
        base + "tokens_per_s": 100 * speedup,
        base + "full_tokens_per_s": 100.0,
        base + "ttft_ms": 12.0,
        base + "full_ttft_ms": 11.0,
        base + "tpot_ms": 10 / speedup,
        base + "full_tpot_ms": 10.0,
        base + "timing_samples": 2 * prompts,
        base + "acceptance_rate": acceptance[0],
        base + "acceptance_rate_demo": acceptance[1],
        base + "mean_accepted_tokens": mat,
        base + "outputs_equal_full": equal,
    }
    for metric, (ours, low, high) in (quality or {}).items():
        full = FULL_QUALITY[name][metric]
        out[f"{base}quality.{metric}"] = ours
        out[f"{base}quality_full.{metric}"] = full
        out[f"{base}quality_delta.{metric}"] = ours - full
        out[f"{base}quality_delta_ci_low.{metric}"] = low
        out[f"{base}quality_delta_ci_high.{metric}"] = high
        out[f"{base}quality_higher_is_better.{metric}"] = True
    return out


def lossless(name: str) -> dict[str, tuple[float, float, float]]:
    return {m: (q, 0.0, 0.0) for m, q in FULL_QUALITY[name].items()}


def run_record(mode: str, workloads: list[dict], config: dict | None = None, **extra) -> dict:
    """A finished run on model ``m``: the workloads' metrics (the first is the primary), the
    primary's speedup as the top-level one, pooled overall numbers, and ``extra`` metrics."""
    names = [next(iter(w)).split(".")[1] for w in workloads]
    metrics: dict = {"workloads": names}
    for w in workloads:
        metrics.update(w)
    primary = f"workload.{names[0]}."
    metrics["speedup"] = metrics[primary + "speedup"]
    metrics["outputs_equal_full"] = metrics[primary + "outputs_equal_full"]
    metrics["heldout_agreement_at_target"] = 1.0 if mode != "early-exit" else 0.9
    metrics["acceptance_rate"] = metrics[primary + "acceptance_rate"]
    metrics["acceptance_rate_demo"] = metrics[primary + "acceptance_rate_demo"]
    metrics.update(machine_busy=False, machine_busy_reason="", profile_inconsistent=False)
    speeds = [metrics[f"workload.{n}.speedup"] for n in names]
    metrics["workload.overall.speedup"] = float(np.mean(speeds))
    metrics["workload.overall.speedup_ci_low"] = float(np.mean(speeds)) - 0.05
    metrics["workload.overall.speedup_ci_high"] = float(np.mean(speeds)) + 0.05
    metrics["workload.overall.decode_speedup"] = float(np.mean(speeds)) * 1.1
    metrics["workload.overall.mean_accepted_tokens"] = metrics[primary + "mean_accepted_tokens"]
    metrics.update(extra)
    flat = {"model.name": "m", "mode.name": mode, "metric.name": "entropy", "calibration.target": 0.8}
    return make_record({**flat, **(config or {})}, metrics, ENV)


def stdlib(speedup, ci, quality, mat=NAN, **kw):
    q = {"exact_match": (quality, *kw.pop("delta_ci", (0.0, 0.0))), "edit_similarity": (0.7, 0.0, 0.0)}
    return workload_metrics("stdlib_completion", speedup, ci, mat, q, **kw)


def cnn(speedup, ci, quality, mat=NAN, delta_ci=(0.0, 0.0), **kw):
    return workload_metrics("cnn_dm_layerskip", speedup, ci, mat, {"rouge2": (quality, *delta_ci)}, **kw)


def heldout(speedup, ci, mat=NAN, equal=False):
    return workload_metrics("heldout", speedup, ci, mat, equal=equal)


LS_NAME, DSSD_NAME = "LayerSkip E=2 K=4", "DSSD · entropy t=0.8"
EE6, EE9, BUSY = "early-exit · entropy t=0.6", "early-exit · entropy t=0.9", "early-exit · margin t=0.6"


def write_store(path: Path) -> Path:
    """Six runs with per-workload results (one on a busy machine), one older record without them,
    one failed run and one torn line."""
    store = ResultStore(path)
    ls = {"mode.exit_layer": 2, "mode.draft_length": 4}
    store.append(
        run_record(
            "full",
            [
                stdlib(1.0, (NAN, NAN), 0.40, mat=1.0, equal=True),
                cnn(1.0, (NAN, NAN), 0.100, mat=1.0, equal=True),
                heldout(1.0, (NAN, NAN), mat=1.0, equal=True),
            ],
        )
    )
    store.append(
        run_record(
            "layerskip",
            [
                workload_metrics(
                    "stdlib_completion",
                    1.30,
                    (1.20, 1.40),
                    2.1,
                    lossless("stdlib_completion"),
                    (0.6, 0.6),
                    True,
                ),
                workload_metrics(
                    "cnn_dm_layerskip",
                    1.10,
                    (1.00, 1.20),
                    1.8,
                    lossless("cnn_dm_layerskip"),
                    (0.5, 0.5),
                    True,
                ),
                heldout(1.2, (1.1, 1.3), mat=2.0, equal=True),
            ],
            ls,
            **{"acc.arc_easy.acc": 0.55, "acc_full.arc_easy.acc": 0.55},
        )
    )
    store.append(
        run_record(
            "dssd",
            [
                workload_metrics(
                    "stdlib_completion",
                    1.20,
                    (1.10, 1.30),
                    1.9,
                    lossless("stdlib_completion"),
                    (0.7, 0.8),
                    True,
                ),
                workload_metrics(
                    "cnn_dm_layerskip",
                    1.25,
                    (1.15, 1.35),
                    2.2,
                    lossless("cnn_dm_layerskip"),
                    (0.6, 0.7),
                    True,
                ),
                workload_metrics("nq_open", 1.05, (0.98, 1.12), 1.5, lossless("nq_open"), (0.4, 0.5), True),
            ],
        )
    )
    store.append(
        run_record(
            "early-exit",
            [
                stdlib(1.60, (1.45, 1.75), 0.30, delta_ci=(-0.15, -0.05)),
                cnn(1.50, (1.40, 1.60), 0.090, delta_ci=(-0.02, 0.0)),
                heldout(1.4, (1.3, 1.5)),
            ],
            {"calibration.target": 0.6},
            **{"acc.arc_easy.acc": 0.50, "acc_full.arc_easy.acc": 0.55, "acc_delta.arc_easy.acc": -0.05},
        )
    )
    store.append(  # beside t=0.6 on cnn: both on the front, their labels close together
        run_record(
            "early-exit",
            [
                stdlib(1.20, (1.10, 1.30), 0.38, delta_ci=(-0.04, 0.0)),
                cnn(1.48, (1.38, 1.58), 0.0905, delta_ci=(-0.02, 0.0)),
            ],
            {"calibration.target": 0.9},
        )
    )
    store.append(
        run_record(
            "early-exit",
            [stdlib(2.50, (2.0, 3.0), 0.39, delta_ci=(-0.03, 0.01)), cnn(3.0, (2.5, 3.5), 0.099)],
            {"calibration.target": 0.6, "metric.name": "margin"},
            machine_busy=True,
            machine_busy_reason="load average 6.2 on 2 cores",
            load_avg_start=6.2,
            load_avg_end=5.9,
            cpu_steal_share=0.05,
            full_tpot_spread=1.8,
            profile_inconsistent=False,
        )
    )
    old = make_record(
        {"model.name": "m", "mode.name": "early-exit", "metric.name": "entropy", "calibration.target": 0.7},
        {"speedup": 1.1, "heldout_agreement_at_target": 0.8},
        ENV,
    )
    store.append(old)
    store.append(make_record({"model.name": "m", "mode.name": "full"}, {}, ENV, status="failed"))
    with path.open("a") as f:
        f.write('{"run_id": "torn", "metric.spe\n')
    return path


@pytest.fixture
def store(tmp_path) -> Path:
    return write_store(tmp_path / "records.jsonl")


@pytest.fixture
def df(store) -> pd.DataFrame:
    with pytest.warns(UserWarning, match="corrupt line"):
        return load_results(store)


@pytest.fixture
def summary(df, tmp_path) -> str:
    written, skipped = make_all(df, tmp_path / "figs")
    return write_summary(df, tmp_path / "figs", "records.jsonl", written, skipped).read_text()


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n")[1].split("\n## ")[0]


def table_rows(text: str) -> list[dict[str, str]]:
    """The first markdown table in ``text`` as dicts keyed by header."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break  # the first table only
    lines = [line for line in lines if not line.startswith("|---")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split(" | ")), strict=True))
        for line in lines[1:]
    ]


# ---------------------------------------------------------------- the tidy per-workload frame


def test_one_row_per_run_and_workload_and_old_records_give_none(df):
    assert len(df) == 7  # six runs with workloads and the old record; failed and torn left out
    old = df[df["target"] == 0.7]
    assert old["speedup"].tolist() == [1.1]  # the old record loads as it did
    wf = workload_frame(df)
    assert len(wf) == 3 + 3 + 3 + 3 + 2 + 2
    assert not wf["run_id"].isin(old["run_id"]).any()
    assert workload_order(wf) == ["stdlib_completion", "cnn_dm_layerskip", "heldout", "nq_open"]
    ls = wf[(wf["mode"] == "layerskip") & (wf["workload"] == "stdlib_completion")].iloc[0]
    assert ls["primary"] and ls["position"] == 0 and ls["prompts"] == 40 and ls["domain"] == "Python code"
    assert ls["speedup_ci_low"] == 1.20 and ls["mean_accepted_tokens"] == 2.1 and ls["outputs_equal_full"]
    assert ls["metrics"] == ("exact_match", "edit_similarity")
    assert headline_metric(wf, "stdlib_completion") == "exact_match"
    assert headline_metric(wf, "nq_open") == "exact_match,remove_whitespace"  # a comma in the name
    assert headline_metric(wf, "heldout") is None
    busy = wf[wf["busy"]]
    assert set(busy["name"]) == {BUSY} and set(busy["busy_reason"]) == {"load average 6.2 on 2 cores"}


def test_frame_of_old_records_only_is_empty_and_names_are_read_leniently(tmp_path):
    store = ResultStore(tmp_path / "old.jsonl")
    store.append(make_record({"model.name": "m", "mode.name": "full"}, {"speedup": 1.0}, ENV))
    df = load_results(store.path)
    wf = workload_frame(df)
    assert wf.empty and "workload" in wf and "speedup" in wf
    assert not df["busy"].any() and df["busy_reason"].tolist() == [""]
    assert workload_names('["a", "b"]') == ["a", "b"]
    assert workload_names("not json") == [] and workload_names(None) == [] and workload_names(NAN) == []


# ---------------------------------------------------------------- summary tables


def test_spec_bench_table_shows_speedup_interval_and_accepted_tokens_per_workload(summary):
    text = section(summary, "Generation workloads: speedup and mean accepted tokens")
    rows = {r["run"]: r for r in table_rows(text)}
    stdlib_col = "stdlib_completion (Python code, 40 prompts)"
    cnn_col = "cnn_dm_layerskip (English news, 20 prompts)"
    nq_col = "nq_open (English questions, 50 prompts)"
    assert list(rows[LS_NAME]) == [
        "model",
        "device",
        "run",
        "KV",
        "head arch",
        stdlib_col,
        cnn_col,
        "heldout (Python code, 16 prompts)",
    ] + [
        nq_col,
        "overall",
    ]
    assert rows[LS_NAME][stdlib_col] == "1.30× [1.20–1.40] · 2.1 tok/pass"
    assert rows[LS_NAME][cnn_col] == "1.10× [1.00–1.20] · 1.8 tok/pass"
    assert rows[LS_NAME][nq_col] == "not run"
    assert rows[LS_NAME]["overall"] == "1.20× [1.15–1.25] · 2.1 tok/pass"
    assert rows[LS_NAME]["device"] == "NVIDIA H200"
    assert rows[EE6][stdlib_col] == "1.60× [1.45–1.75]"  # early-exit: no verification, no tok/pass
    assert rows["full"][stdlib_col] == "1.00× (baseline) · 1.0 tok/pass"
    assert rows[DSSD_NAME][nq_col] == "1.05× [0.98–1.12] · 1.5 tok/pass"
    assert rows[f"{BUSY} (busy machine)"][stdlib_col].startswith("2.50×")
    assert "early-exit · entropy t=0.7" not in text  # the old record has no per-workload results
    assert "6 run(s) timed full decoding and their own mode side by side" in text
    assert "`stdlib_completion` 1.60× (early-exit · entropy t=0.6)" in text  # busy 2.50× left out
    assert "ranges from 1.05× on `nq_open` to 1.60× on `stdlib_completion`" in text
    assert "`heldout`: code execution off" in text
    detail = table_rows(text.split("the paired samples timed.")[1])
    first = next(r for r in detail if r["run"] == LS_NAME and r["workload"] == "stdlib_completion")
    assert first["decode speedup [95% CI]"] == "1.43× [1.32–1.54]"
    assert first["acceptance"] == "0.600" and first["outputs = full"] == "yes" and first["samples"] == "80"


def test_quality_table_puts_each_run_beside_full_with_the_delta_interval(summary):
    text = section(summary, "Generation workloads: quality beside full")
    rows = {r["run"]: r for r in table_rows(text)}
    em = "stdlib_completion (Python code, 40 prompts): exact_match ↑"
    assert rows[EE6][em] == "0.300 (full 0.400) Δ -0.100 [-0.150, -0.050]"
    assert rows[LS_NAME][em] == "0.400 (full 0.400) Δ +0.000 [+0.000, +0.000]"
    assert rows["full"][em] == "0.400 (baseline)"
    nq = "nq_open (English questions, 50 prompts): exact_match,remove_whitespace ↑"
    assert (
        rows[DSSD_NAME][nq] == "0.250 (full 0.250) Δ +0.000 [+0.000, +0.000]" and rows[EE6][nq] == "not run"
    )
    assert "stdlib_completion (Python code, 40 prompts): edit_similarity ↑" in rows[EE6]
    assert "5 quality metric(s) on 3 workload(s)" not in text  # counted from the data, not fixed:
    assert "4 quality metric(s) on 3 workload(s)" in text
    assert "Speed only (no quality metric): `heldout`." in text
    assert "Largest quality loss against full: early-exit · entropy t=0.6 on `stdlib_completion`" in text


def test_loglikelihood_accuracy_has_its_own_table_labelled_as_such(summary):
    text = section(summary, "Log-likelihood tasks: accuracy only, no speedup")
    assert LOGLIKELIHOOD_LABEL[1:] in text
    rows = {r["run"]: r for r in table_rows(text)}
    assert rows[EE6] == {
        "model": "m",
        "run": EE6,
        "task": "arc_easy",
        "metric": "acc",
        "ours": "0.500",
        "full": "0.550",
        "Δ": "-0.050",
        "KV": "fill",
        "head arch": "—",  # not recorded in these records
        # No stderr and no task.limit in these records: no interval, and the table says why.
        "Δ 95% interval": "—",
        "interval from": "none: no stderr or document count recorded",
    }
    assert rows[LS_NAME]["Δ"] == "+0.000 (lossless)"
    assert rows[LS_NAME]["Δ 95% interval"] == "[+0.000, +0.000]"
    assert rows[LS_NAME]["interval from"] == "lossless: outputs equal full's"
    assert "1 result(s) have neither, so no interval (and no bar in the figures)." in text
    assert "2 result(s) over 1 task(s)" in text


# ---------------------------------------------------------------- busy machines and skipped records


def test_busy_runs_are_off_every_front_drawn_apart_and_counted(df, summary):
    records = section(summary, "Records and machine load")
    assert (
        f"1 run(s) on a busy machine, excluded from fronts: {BUSY} (load average 6.2 on 2 cores; "
        "1-min load average 6.20 → 5.90, CPU steal 5.0%, full's per-token time spread 1.80×)"
    ) in records
    assert "1 run(s) carry no machine-load verdict" in records  # the old record
    wf = workload_frame(df)
    points = speed_quality_points(wf, "stdlib_completion", "exact_match")
    front = set(points.loc[points["on_front"], "name"])
    assert front == {LS_NAME, EE6}  # the busy run's (2.50, 0.39) would push EE6 off
    with_busy = speed_quality_points(wf, "stdlib_completion", "exact_match", include_busy=True)
    assert set(with_busy.loc[with_busy["on_front"], "name"]) == {LS_NAME, BUSY}
    # The run-level fronts (measured table, speed-accuracy figure) leave it out too.
    marked = mark_fronts(df, "speedup", "agreement_delta", by=["model"])
    assert not marked.loc[marked["busy"], "on_front"].any()
    (ax,) = FIGURES["speed_accuracy_speedup"](df.assign(acc_delta=df["acc_delta"].fillna(-0.1))).axes
    assert _offsets(ax, "busy") == {(2.5, -0.1)}  # hatched over its marker, and named in the legend
    assert "busy machine (off the fronts)" in {t.get_text() for t in ax.get_legend().get_texts()}
    measured = section(summary, "Measured")
    assert sum("| busy machine |" in line for line in measured.splitlines()) == 1
    fronts = section(summary, "Generation workloads: speed–quality fronts")
    line = next(x for x in fronts.splitlines() if x.startswith("- `stdlib_completion`"))
    assert f"busy machine, left off the front: {BUSY} (2.50×, 0.390)" in line
    assert f"off the front: full (1.00×, 0.400), {DSSD_NAME} (1.20×, 0.400), {EE9} (1.20×, 0.380)" in line
    assert f"on the front (labelled): {LS_NAME} (1.30×, 0.400), {EE6} (1.60×, 0.300)" in line


def test_cli_counts_skipped_records_and_draws_a_figure_per_workload(store, tmp_path):
    out = tmp_path / "figures"
    with pytest.warns(UserWarning, match="corrupt line"):
        assert main(["--results", str(store), "--out", str(out)]) == 0
    text = (out / "summary.md").read_text()
    assert (
        "The store holds 9 record line(s): 7 finished run(s) read; skipped 1 failed run(s) (status "
        "`failed`: no numbers), 1 unreadable line(s) (line 9) and 0 record(s) of an unknown schema "
        "version; 0 older run(s) of a repeated config left out"
    ) in text
    counts = count_store(store)
    assert (counts.ok, counts.failed, counts.unreadable) == (7, 1, (9,))
    for name in ("stdlib_completion", "cnn_dm_layerskip", "nq_open"):
        png, pdf = out / f"speed_quality_{name}.png", out / f"speed_quality_{name}.pdf"
        assert imread(png).shape[0] > 100 and pdf.read_bytes()[:4] == b"%PDF"
        assert f"[png](speed_quality_{name}.png)" in text
    assert not (out / "speed_quality_heldout.png").exists()
    assert "speed_quality_heldout: skipped (heldout records no quality metric (code execution off)" in text
    assert (out / "speed_accuracy_speedup.png").exists()  # the run-level figures are still drawn


# ---------------------------------------------------------------- the per-workload figure


def _offsets(ax, gid: str) -> set[tuple[float, float]]:
    return {
        (round(float(x), 6), round(float(y), 6))
        for c in ax.collections
        if c.get_gid() == gid
        for x, y in c.get_offsets()
    }


def test_speed_quality_figure_draws_fronts_busy_runs_and_a_full_legend(df):
    (ax,) = fig_speed_quality(df, "stdlib_completion").axes
    assert _offsets(ax, "on_front") == {(1.3, 0.4), (1.6, 0.3)}
    assert _offsets(ax, "busy") == {(2.5, 0.39)}
    assert _offsets(ax, "full") == {(1.0, 0.4)}
    busy = next(c for c in ax.collections if c.get_gid() == "busy")
    assert busy.get_hatch() == "////"
    labels = sorted(t.get_text() for t in ax.texts if isinstance(t, Annotation))
    assert labels == sorted([LS_NAME, EE6])  # front points only, never full or the rest
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    series = {"LayerSkip", "DSSD · entropy", "early-exit · entropy · KV fill"}
    assert series | {"full", "hollow: off the front", "busy machine (off the fronts)"} <= legend
    assert ax.get_ylabel() == "exact_match (higher is better)"
    assert "stdlib_completion (Python code, 40 prompts)" in ax.get_title()
    bars = [c for c in ax.collections if c.get_gid() == "speedup_ci"]
    ends = {(round(float(s[0][0]), 6), round(float(s[1][0]), 6)) for b in bars for s in b.get_segments()}
    assert (1.45, 1.75) in ends and (1.2, 1.4) in ends
    lossless = {(x, y) for x, y in _offsets(ax, "on_front") | {(1.2, 0.4)} if y == 0.4}
    assert lossless == {(1.3, 0.4), (1.2, 0.4)}  # lossless modes on full's quality line


def test_front_labels_never_overprint(df, tmp_path):
    fig = fig_speed_quality(df, "cnn_dm_layerskip")
    (ax,) = fig.axes
    names = sorted(t.get_text() for t in ax.texts if isinstance(t, Annotation))
    assert names == sorted([DSSD_NAME, EE6, EE9])  # t=0.6 and t=0.9 almost coincide
    fig.savefig(tmp_path / "f.png")
    renderer = fig.canvas.get_renderer()
    spread_labels(ax)
    boxes = [t.get_window_extent(renderer) for t in ax.texts if isinstance(t, Annotation)]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_old_records_draw_no_workload_figure_and_say_so(tmp_path):
    store = ResultStore(tmp_path / "old.jsonl")
    store.append(make_record({"model.name": "m", "mode.name": "full"}, {"speedup": 1.0}, ENV))
    df = load_results(store.path)
    written, skipped = make_all(df, tmp_path)
    assert not [n for n in [*written, *skipped] if n.startswith("speed_quality_")]
    text = write_summary(df, tmp_path, "old.jsonl", written, skipped).read_text()
    assert "No run records per-workload results" in text
    assert "Skipped records: not counted" in text and "0 runs on a busy machine" in text


# ---------------------------------------------------------------- published generation numbers


def test_published_generation_rows_show_our_number_or_not_run(df, summary):
    rows = published_generation_rows(df, load_published())
    header = ["published", "theirs", "task", "metric", "value", "workload", "ours_at", "speedup"]
    header += ["acceptance", "run", "match"]
    table = pd.DataFrame([dict(zip(header, r, strict=True)) for r in rows])
    cnn = table[(table["task"] == "CNN/DM 1-shot") & (table["metric"] == "speedup")]
    assert len(cnn) == 4 and set(cnn["workload"]) == {"`cnn_dm_layerskip`"}
    assert set(cnn["speedup"]) == {"1.10× [1.00–1.20] · 1.8 tok/pass"}
    assert set(cnn["run"]) == {f"best speedup: {LS_NAME}"}
    assert set(cnn["ours_at"]) == {"m · cuda (NVIDIA H200)"}
    assert all(m.startswith("model no, hardware no; prompt format: same") for m in cnn["match"])
    accept = table[(table["task"] == "CNN/DM 1-shot") & (table["metric"] == "acceptance")]
    assert set(accept["acceptance"]) == {"0.500 (demo count 0.500)"}
    for task in ("XSUM 0-shot", "HumanEval", "TOPv2"):
        assert set(table.loc[table["task"] == task, "speedup"]) == {"not run"}, task
    blog = table[table["task"] == "summarisation"]
    assert len(blog) == 5 and set(blog["run"]) == {"no workload matches: the source names no data set"}
    calm = table[(table["task"] == "CNN/DM") & (table["metric"] == "speedup_estimated")].iloc[0]
    assert calm["speedup"] == "1.50× [1.40–1.60]"  # our best early-exit on cnn_dm (busy 3.0× left out)
    assert "prompt format: different" in calm["match"]
    text = section(summary, "Published generation results beside ours")
    assert "| 1.86 | `cnn_dm_layerskip` | m · cuda (NVIDIA H200) | 1.10× [1.00–1.20] · 1.8 tok/pass |" in text
    assert (
        "| XSUM 0-shot | speedup | 1.54 | `xsum_layerskip` | m · cuda (NVIDIA H200) | not run | not run |"
        in text
    )
