"""analysis/: speedup against batch size (figures, the summary's "stops paying" sentences, the
projection of batch traces), on synthetic records in the batched runner's schema (no model runs).

The runs, on two workloads and pooled (``overall``), at B = 1, 2, 4, 8:
- early-exit (KV fill): pays at B = 1, 2; its interval lies wholly below 1 from B = 4 on
  `stdlib_completion` (stops paying at 4), and only at B = 8 on `heldout`;
- DSSD: its interval lies wholly above 1 at every B (pays everywhere);
- LayerSkip: its point estimate drops below 1 at B = 2, within noise, and its interval only at 8;
- early-exit (KV propagate) on a busy machine: drawn apart, its baseline never the reference.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection

import analysis.project as project_cli
from analysis.__main__ import main as analysis_main
from analysis.batch_figures import batch_figures, fig_batch_speedup, make_batch_figures
from analysis.batch_summary import NO_BATCHES, batch_section, stop_sizes
from analysis.batches import batch_frame, batch_references, verdict
from analysis.load import load_results
from analysis.project import project
from earlyexit.harness.results import ResultStore, make_record
from earlyexit.measure.profile import FORMAT, CostProfile
from earlyexit.model.trace import TraceCounts

SIZES = [1, 2, 4, 8]
WORKLOADS = ["stdlib_completion", "heldout"]
ENV = {"device": "cuda", "device_name": "NVIDIA H200", "dtype": "float16"}
SHAPE = "GPTNeoXForCausalLM layers=8 hidden=64 heads=4 kv_heads=4 ffn=256 vocab=100"
# Throughput speedup per B on stdlib_completion, with its interval (low, high).
EARLY_EXIT = [(1.40, 1.30, 1.50), (1.15, 1.05, 1.25), (0.90, 0.85, 0.95), (0.70, 0.65, 0.75)]
DSSD = [(1.30, 1.20, 1.40), (1.25, 1.15, 1.35), (1.20, 1.10, 1.30), (1.10, 1.05, 1.15)]
LAYERSKIP = [(1.05, 0.95, 1.15), (0.97, 0.90, 1.04), (0.96, 0.90, 1.02), (0.80, 0.70, 0.90)]
BUSY = [(1.60, 1.00, 2.20), (1.10, 0.60, 1.60), (0.80, 0.40, 1.20), (0.50, 0.20, 0.80)]
# On heldout every number is 10% higher: early-exit's B = 4 interval then holds 1.
HELDOUT_SCALE = 1.1
HF_GENERATE = [0.90, 0.92, 0.95, 0.97]  # transformers' batched generate, against full at each B
# Batched passes that exit (of 10) at each B: a batch exits only when every row's head fires.
EXIT_PASSES = {1: 6, 2: 4, 4: 2, 8: 0}


def batched_trace(size: int, exits: int) -> TraceCounts:
    """10 whole-batch passes of ``size`` rows: ``exits`` leave after 3 layers at the head on layer
    2, the rest fail the check there and run all 8 layers (one segment) and the unembedding."""
    t = TraceCounts(passes=10)
    if exits:
        t.segments[(3, size, 0, 15, True, 0, 0, 0)] = exits
        t.checks[(2, True)] = exits
    if 10 - exits:
        t.segments[(8, size, 0, 15, False, 0, 0, 0)] = 10 - exits
        t.checks[(2, False)] = 10 - exits
        t.unembed[size] = 10 - exits
    return t


def full_batched_trace(size: int) -> TraceCounts:
    t = TraceCounts(passes=10)
    t.segments[(8, size, 0, 15, False, 0, 0, 0)] = 10
    t.unembed[size] = 10
    return t


def batch_metrics(speeds: list[tuple[float, float, float]], traces: bool = False, equal: bool = True) -> dict:
    """A run's batch fields (without ``metric.``), as the batched runner writes them: per B and
    workload the throughput and per-sequence speedups, equality with full, FLOPs ratio, the
    prediction on the first workload only, and transformers' batched generate."""
    out: dict = {"batch_sizes": SIZES}
    for size, (speedup, low, high) in zip(SIZES, speeds, strict=True):
        for workload in [*WORKLOADS, "overall"]:
            scale = HELDOUT_SCALE if workload == "heldout" else 1.0
            base = f"batch.{size}.workload.{workload}."
            out |= {
                base + "throughput_speedup": speedup * scale,
                base + "throughput_speedup_ci_low": low * scale,
                base + "throughput_speedup_ci_high": high * scale,
                base + "tokens_per_s": 100.0 * size * speedup,
                base + "full_tokens_per_s": 100.0 * size,
                base + "seq_tpot_ms": 10.0 / (0.9 * speedup),
                base + "full_seq_tpot_ms": 10.0,
                base + "seq_speedup": 0.9 * speedup,
                base + "seq_speedup_ci_low": 0.9 * low,
                base + "seq_speedup_ci_high": 0.9 * high,
                base + "outputs_equal_full": equal,
                base + "flops_ratio": 0.7,
            }
            hf = HF_GENERATE[SIZES.index(size)] * (0.5 if speeds is BUSY else 1.0)
            out |= {
                base + "baseline.hf_generate.throughput_speedup": hf,
                base + "baseline.hf_generate.throughput_speedup_ci_low": hf - 0.03,
                base + "baseline.hf_generate.throughput_speedup_ci_high": hf + 0.03,
                base + "baseline.hf_generate.tokens_per_s": 100.0 * size * hf,
                base + "baseline.hf_generate.seq_speedup": 0.9 * hf,
                base + "baseline.hf_generate.seq_speedup_ci_low": 0.9 * hf - 0.03,
                base + "baseline.hf_generate.seq_speedup_ci_high": 0.9 * hf + 0.03,
                base + "baseline.hf_generate.outputs_equal_full": size < 8,
            }
        first = f"batch.{size}.workload.{WORKLOADS[0]}."
        out[first + "predicted_speedup"] = speedup * 1.1
        out[first + "prediction_error"] = 0.02 * size
        if traces:
            out[f"batch.{size}.trace"] = batched_trace(size, EXIT_PASSES[size]).to_json()
            out[f"batch.{size}.full_trace"] = full_batched_trace(size).to_json()
            out[f"batch.{size}.decode_tokens"] = 10 * size
            out[f"batch.{size}.full_decode_tokens"] = 10 * size
    return out


def record(mode: str, batch: dict | None, busy: bool = False, **config) -> dict:
    """A finished batched run on model ``m`` (no ``batch``: a record from before batched decoding)."""
    metrics = {
        "workloads": WORKLOADS,
        "speedup": 1.2,
        "machine_busy": busy,
        "machine_busy_reason": "load average 9.1 on 2 CPUs" if busy else "",
        "profile_inconsistent": False,
        "model_shape": SHAPE,
        **(batch or {}),
    }
    flat = {
        "model.name": "m",
        "mode.name": mode,
        "metric.name": "entropy",
        "calibration.target": 0.8,
        "heads.architecture": "linear",
        "bench.batch_size": SIZES if batch else 1,
        **config,
    }
    return make_record(flat, metrics, ENV)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    s = ResultStore(tmp_path_factory.mktemp("batch") / "records.jsonl")
    s.append(record("full", batch_metrics([(1.0, 1.0, 1.0)] * 4)))
    s.append(record("early-exit", batch_metrics(EARLY_EXIT, traces=True, equal=False)))
    s.append(record("dssd", batch_metrics(DSSD)))
    s.append(record("layerskip", batch_metrics(LAYERSKIP), **{"mode.exit_layer": 2, "mode.draft_length": 4}))
    s.append(record("early-exit", batch_metrics(BUSY), busy=True, **{"engine.kv": "propagate"}))
    return s.path


@pytest.fixture(scope="module")
def df(store) -> pd.DataFrame:
    return load_results(store)


EE, EE_BUSY = "early-exit · entropy t=0.8 · KV fill", "early-exit · entropy · KV propagate t=0.8"
DSSD_NAME, LS_NAME = "DSSD · entropy t=0.8", "LayerSkip E=2 K=4"


# ---------------------------------------------------------------- the frame and the verdict


def test_batch_frame_reads_every_run_size_and_workload_and_names_kv_where_runs_differ(df):
    bf = batch_frame(df)
    assert len(bf) == 5 * 4 * 3  # runs x B x (two workloads + overall)
    assert set(bf["name"]) == {"full", EE, DSSD_NAME, LS_NAME, EE_BUSY}
    ee = bf[(bf["name"] == EE) & (bf["workload"] == "heldout")].sort_values("batch_size")
    assert ee["batch_size"].tolist() == SIZES
    np.testing.assert_allclose(ee["throughput_speedup"], [s * HELDOUT_SCALE for s, _, _ in EARLY_EXIT])
    assert ee["outputs_equal_full"].tolist() == [False] * 4
    assert ee["predicted_speedup"].isna().all()  # predicted on the first workload only
    assert bf.loc[bf["name"] == EE_BUSY, "busy"].all() and not bf.loc[bf["name"] == EE, "busy"].any()
    overall = bf[bf["workload"] == "overall"]
    assert (overall["position"] == 2).all()


def test_the_reference_is_the_newest_steady_runs_batched_generate(df):
    refs = batch_references(df)
    stdlib = refs[refs["workload"] == "stdlib_completion"].sort_values("batch_size")
    assert stdlib["batch_size"].tolist() == SIZES
    np.testing.assert_allclose(stdlib["throughput_speedup"], HF_GENERATE)  # not the busy run's halves
    assert not stdlib["busy"].any() and (stdlib["runs_measured"] == 5).all()


@pytest.mark.parametrize(
    ("speeds", "stops", "point", "never", "everywhere"),
    [
        (EARLY_EXIT, 4, 4, False, False),
        (DSSD, None, None, False, True),
        (LAYERSKIP, 8, 2, False, False),
        ([(0.9, 0.8, 0.95)] * 4, 1, 1, True, False),
    ],
)
def test_verdict_takes_the_smallest_size_whose_interval_lies_below_one(
    speeds, stops, point, never, everywhere
):
    rows = pd.DataFrame(
        {
            "batch_size": SIZES[::-1],  # any order: the verdict sorts by B
            "throughput_speedup": [s[0] for s in speeds][::-1],
            "throughput_speedup_ci_low": [s[1] for s in speeds][::-1],
            "throughput_speedup_ci_high": [s[2] for s in speeds][::-1],
        }
    )
    v = verdict(rows)
    assert (v.stops_at, v.point_below_at, v.never_pays, v.pays_everywhere) == (
        stops,
        point,
        never,
        everywhere,
    )


# ---------------------------------------------------------------- the figure


def _size(x: float) -> int:
    """The batch size a point stands for: points sit a little off their B, so that intervals at
    one B stand side by side; never so far that they could be read as another B."""
    size = 2 ** round(np.log2(x))
    assert abs(x / size - 1) < 0.1
    return int(size)


def _lines(ax, gid: str) -> dict[str, tuple[list[int], list[float]]]:
    """label -> (the B of each point, its y) of the lines with ``gid``."""
    return {
        line.get_label(): ([_size(x) for x in line.get_xdata()], list(line.get_ydata()))
        for line in ax.lines
        if line.get_gid() == gid
    }


def test_figure_draws_a_line_per_run_against_log2_batch_size_with_the_reference(df):
    throughput, per_sequence = fig_batch_speedup(df, "stdlib_completion").axes[:2]
    series = _lines(throughput, "series")
    assert list(series) == [EE, DSSD_NAME, LS_NAME]  # full is the 1.0 line, not a series
    assert series[EE] == (SIZES, pytest.approx([s for s, _, _ in EARLY_EXIT]))
    assert series[DSSD_NAME][1] == pytest.approx([s for s, _, _ in DSSD])
    (busy,) = _lines(throughput, "busy").items()
    assert busy[0] == f"{EE_BUSY} (busy machine)" and busy[1][1] == pytest.approx([s for s, _, _ in BUSY])
    ((label, (xs, ys)),) = _lines(throughput, "reference").items()
    assert label == "baseline: hf_generate (transformers), batched" and ys == pytest.approx(HF_GENERATE)
    assert next(line for line in throughput.lines if line.get_gid() == "reference").get_linestyle() == "--"
    assert [line.get_ydata()[0] for line in throughput.lines if line.get_gid() == "parity"] == [1.0]
    assert throughput.get_xscale() == "log"
    assert [t.get_text() for t in throughput.get_xticklabels()] == ["1", "2", "4", "8"]
    bars = [c for c in throughput.collections if isinstance(c, LineCollection) and c.get_gid() == "ci"]
    ends = sorted((_size(seg[0][0]), seg[0][1], seg[1][1]) for c in bars for seg in c.get_segments())
    assert (4, 0.85, 0.95) in ends and (8, 1.05, 1.15) in ends  # early-exit at 4, DSSD at 8
    assert len(ends) == 4 * 4  # three steady runs and the busy one, four sizes each
    # Side by side at one B: no two series' points share an x.
    drawn = [line for line in throughput.lines if line.get_gid() in ("series", "busy", "reference")]
    xs = [x for line in drawn for x in line.get_xdata()]
    assert len(set(np.round(xs, 9))) == len(xs) == 5 * 4
    # The second panel: per-sequence speedup, the same runs and reference.
    assert _lines(per_sequence, "series")[EE][1] == pytest.approx([0.9 * s for s, _, _ in EARLY_EXIT])
    assert _lines(per_sequence, "reference")[label][1] == pytest.approx([0.9 * h for h in HF_GENERATE])
    legend = [t.get_text() for t in per_sequence.get_legend().get_texts()]
    assert legend[:5] == [EE, DSSD_NAME, LS_NAME, f"{EE_BUSY} (busy machine)", label]


def test_figures_are_registered_per_workload_and_overall_and_none_for_old_records(df, tmp_path, caplog):
    assert list(batch_figures(df)) == [
        "batch_speedup_stdlib_completion",
        "batch_speedup_heldout",
        "batch_speedup_overall",
    ]
    old = load_results(_old_store(tmp_path))
    assert batch_figures(old) == {} and batch_frame(old).empty
    with caplog.at_level(logging.INFO, logger="analysis.batch_figures"):
        assert make_batch_figures(old, tmp_path / "figs") == ({}, {})
    assert "no batch-size figure" in caplog.text
    assert not (tmp_path / "figs").exists()
    assert batch_section(old) == NO_BATCHES


def _old_store(tmp_path: Path) -> Path:
    s = ResultStore(tmp_path / "old.jsonl")
    s.append(record("full", None))
    s.append(record("dssd", None))
    return s.path


# ---------------------------------------------------------------- the summary


def _block(text: str, heading: str) -> str:
    return text.split(f"### {heading}")[1].split("\n### ")[0]


def test_summary_names_where_each_run_stops_paying(df):
    text = batch_section(df)
    stdlib = _block(text, "`stdlib_completion`")
    assert (
        f"- {EE} stops paying at B = 4: its interval there, [0.85–0.95], lies wholly below 1; its point "
        "estimate first drops below 1 at B = 4 (0.90×)." in stdlib
    )
    assert (
        f"- {DSSD_NAME} pays at every B measured (B = 1, 2, 4, 8): its interval lies wholly above 1 at "
        "each; its point estimate never drops below 1." in stdlib
    )
    assert f"- {LS_NAME} stops paying at B = 8" in stdlib
    assert "first drops below 1 at B = 2 (0.97×)" in stdlib
    assert f"{EE_BUSY} (busy machine: timings unreliable) stops paying at B = 8" in stdlib
    # On heldout early-exit's interval at B = 4 holds 1: it stops only at 8.
    heldout = _block(text, "`heldout`")
    assert f"- {EE} stops paying at B = 8" in heldout
    assert stop_sizes(df, "heldout")[EE] == 8 and stop_sizes(df, "stdlib_completion")[DSSD_NAME] is None


def test_summary_tables_give_each_speedup_interval_and_the_prediction_error_per_size(df):
    stdlib = _block(batch_section(df), "`stdlib_completion`")
    throughput = stdlib.split("Throughput speedup")[1].split("Per-sequence")[0]
    header = next(line for line in throughput.splitlines() if line.startswith("| model"))
    assert header.endswith("| B = 1 | B = 2 | B = 4 | B = 8 |")
    ee = next(line for line in throughput.splitlines() if "| early-exit · entropy t=0.8 |" in line)
    assert ee.endswith("| 1.40× [1.30–1.50] | 1.15× [1.05–1.25] | 0.90× [0.85–0.95] | 0.70× [0.65–0.75] |")
    hf = next(line for line in throughput.splitlines() if "baseline: hf_generate" in line)
    assert hf.endswith("| 0.90× [0.87–0.93] | 0.92× [0.89–0.95] | 0.95× [0.92–0.98] | 0.97× [0.94–1.00] |")
    assert "(busy machine)" in next(line for line in throughput.splitlines() if "KV propagate" in line)
    assert not any("| full |" in line for line in throughput.splitlines())
    cost = stdlib.split("Cost model per batch size")[1]
    dssd = next(line for line in cost.splitlines() if "| DSSD · entropy t=0.8 |" in line)
    assert "| predicted 1.43× (error +2.0%) |" in dssd and dssd.endswith("| predicted 1.21× (error +16.0%) |")
    median = next(line for line in cost.splitlines() if "median abs(error)" in line)
    assert median.endswith("| 2.0% (4 run(s)) | 4.0% (4 run(s)) | 8.0% (4 run(s)) | 16.0% (4 run(s)) |")
    # Predictions are recorded for the first workload only: no cost table on heldout.
    assert "Cost model per batch size" not in _block(batch_section(df), "`heldout`")


def test_summary_names_a_listed_size_that_recorded_nothing(store, tmp_path):
    s = ResultStore(tmp_path / "records.jsonl")
    s.append(record("dssd", batch_metrics(DSSD) | {"batch_sizes": [*SIZES, 16]}))
    text = batch_section(load_results(s.path))
    assert f"Listed in `bench.batch_size` but with no number recorded: {DSSD_NAME}: B = 16." in text
    assert "Listed in" not in batch_section(load_results(store))


def test_summary_says_which_batched_outputs_differed_from_full(df):
    text = batch_section(df)
    assert (
        f"Batched outputs that differ from full's at the same B: {EE} (lossy: expected): "
        "`stdlib_completion` at B = 1, 2, 4, 8; `heldout` at B = 1, 2, 4, 8." in text
    )
    assert (
        "Baseline hf_generate (transformers), batched, differs from full's (left padding; greedy outputs "
        "can part on near-ties): `stdlib_completion` at B = 8; `heldout` at B = 8." in text
    )
    lossless = df[df["mode"] != "early-exit"]
    assert "Every batched output equals full's at the same B (24 checked)." in batch_section(lossless)


# ---------------------------------------------------------------- the projection


def make_profile() -> CostProfile:
    """Per segment of n layers on r rows 0.1 + n (0.5 + 0.5 r) ms (linear past the 2 rows
    timed), unembedding 0.2 + 0.3 r, a head 0.2, an entropy decision 0.1 beyond it, a pass 0.4."""
    identity = {
        "format": FORMAT,
        "device": "cuda",
        "device_name": "Other GPU",
        "dtype": "float16",
        "model_shape": SHAPE,
        "head_architecture": "linear",
        "head_rank": None,
        "graphs": False,
    }
    return CostProfile(
        identity=identity,
        rows=[1, 2],
        kv_lengths=[10, 20],
        segment_fixed_ms=[[0.1, 0.1], [0.1, 0.1]],
        layer_ms=[[1.0, 1.0], [1.5, 1.5]],
        unembed_ms=[0.5, 0.8],
        head_ms=0.2,
        decision_ms={"entropy": 0.3},
        pass_fixed_ms=0.4,
    )


def expected_speedup(size: int) -> float:
    """By hand: full's 10 passes cost 0.1 + 8 (0.5 + 0.5 B) + (0.2 + 0.3 B) + 0.4 each. The mode's
    e exiting passes cost 0.1 + 3 (0.5 + 0.5 B) each, its other 10 - e passes 0.1 + 8 (0.5 + 0.5 B)
    + (0.2 + 0.3 B) each, and every one of its 10 passes 0.4 fixed and a head check (0.2 + 0.1).
    Both over the same 10 B tokens, so their ratio is the throughput speedup."""
    e = EXIT_PASSES[size]
    full = 10 * (4.7 + 4.3 * size)
    mode = e * (1.6 + 1.5 * size) + (10 - e) * (4.3 + 4.3 * size) + 10 * 0.4 + 10 * 0.3
    return full / mode


def test_projection_prices_each_batch_trace_with_the_profile(df):
    result = project(df, make_profile())
    assert result.table.empty  # the batched runs store no single-sequence trace
    batch = result.batch
    assert list(batch["mode"].unique()) == ["early-exit"] and batch["batch_size"].tolist() == SIZES
    np.testing.assert_allclose(batch["projected_speedup"], [expected_speedup(b) for b in SIZES])
    np.testing.assert_allclose(batch["projected_full_tpot_ms"], [(47 + 43 * b) / (10 * b) for b in SIZES])
    assert batch["extrapolated"].tolist() == [False, False, True, True]  # the profile timed 2 rows
    assert expected_speedup(4) > 1 > expected_speedup(8)
    assert len(result.no_trace) == 4  # the runs without batch traces are named, not priced
    text = project_cli.batch_markdown(result)
    assert "would stop paying at B = 8" in text and "8 (> 2: extrapolated)" in text


def test_projection_prices_a_runs_own_trace_beside_its_batch_traces_and_names_a_bad_one(tmp_path):
    metrics = batch_metrics(EARLY_EXIT, traces=True)
    metrics |= {"trace": batched_trace(1, 6).to_json(), "full_trace": full_batched_trace(1).to_json()}
    metrics |= {"decode_tokens": 10, "full_decode_tokens": 10}
    metrics["batch.4.trace"] = "{not json"
    s = ResultStore(tmp_path / "records.jsonl")
    s.append(record("early-exit", metrics))
    result = project(load_results(s.path), make_profile())
    assert result.table["projected_speedup"].tolist() == pytest.approx([expected_speedup(1)])
    assert result.batch["batch_size"].tolist() == [1, 2, 8]
    assert result.batch["projected_speedup"].tolist() == pytest.approx(
        [expected_speedup(b) for b in (1, 2, 8)]
    )
    (note,) = result.notes()
    assert note.startswith("skipped 1 run(s) the profile cannot price (unreadable batch pass trace: ")
    assert re.search(r"\): m early-exit · entropy t=0\.8 \[[0-9a-f]{8}\] at B = 4$", note)
    assert result.no_trace == []


def test_projection_cli_writes_the_batch_table_and_figure(store, tmp_path, capsys):
    profile = tmp_path / "gpu.json"
    make_profile().save(profile)
    out = tmp_path / "out"
    code = project_cli.main(["--profile", str(profile), "--results", str(store), "--out", str(out)])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert "No run has a single-sequence pass trace." in printed and "## Projected per batch size" in printed
    row = next(
        line for line in printed.splitlines() if line.startswith("| m | early-exit |") and "| 8 |" in line
    )
    assert row.endswith(f"| {expected_speedup(8):.2f}× | 8 (> 2: extrapolated) |")
    csv = pd.read_csv(out / "projected-gpu-batch.csv")
    assert csv["projected_speedup"].tolist() == pytest.approx([expected_speedup(b) for b in SIZES])
    assert (out / "projected-gpu-batch.png").stat().st_size > 0
    assert not (out / "projected-gpu.png").exists()  # nothing single-sequence to draw
    fig = project_cli.fig_projected_batch_speedup(project(load_results(store), make_profile()))
    (line,) = [line for line in fig.axes[0].lines if line.get_gid() == "projected"]
    assert list(line.get_xdata()) == SIZES


# ---------------------------------------------------------------- make figures


def test_make_figures_draws_and_summarises_the_batch_results(store, tmp_path):
    out = tmp_path / "figures"
    assert analysis_main(["--results", str(store), "--out", str(out)]) == 0
    for workload in [*WORKLOADS, "overall"]:
        for fmt in ("png", "pdf"):
            assert (out / f"batch_speedup_{workload}.{fmt}").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    section = summary.split("## Batch size: where the speedup stops paying\n")[1].split("\n## ")[0]
    assert "### `stdlib_completion` ([png](batch_speedup_stdlib_completion.png)" in section
    assert "### pooled over every workload ([png](batch_speedup_overall.png)" in section
    assert f"- {EE} stops paying at B = 4" in section
    assert "- batch_speedup_overall: [png](batch_speedup_overall.png)" in summary
