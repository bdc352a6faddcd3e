"""analysis/: the speedup interval, where the time goes, predicted vs measured and the projection
command, on synthetic records priced exactly as the runner prices them (no model runs here).

The profile is a small hand-made table, so every predicted and projected number below can be (and
for the projection is) worked out by hand.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.patches import Rectangle

import analysis.project as project_cli
from analysis.figures import (
    FIGURES,
    fig_predicted_vs_measured,
    fig_speed_accuracy,
    fig_speedup_predicted_vs_measured,
    fig_time_breakdown,
    make_all,
)
from analysis.load import COST_CATEGORIES, load_results
from analysis.plotting import NoData
from analysis.project import ProjectionRefused, project
from analysis.summary import profile_sources, write_summary
from earlyexit.harness.results import ResultStore, make_record
from earlyexit.harness.runner import predict_run
from earlyexit.measure.cost_model import CATEGORIES
from earlyexit.measure.profile import FORMAT, CostProfile
from earlyexit.model.trace import TraceCounts

ROOT = Path(__file__).resolve().parent.parent
SHAPE = "GPTNeoXForCausalLM layers=8 hidden=64 heads=4 kv_heads=4 ffn=256 vocab=100"


def make_profile(shape: str = SHAPE, architecture: str = "linear", device: str = "Test GPU") -> CostProfile:
    """Costs that are easy to add up: a segment of n layers at r rows costs 0.1 + n * (0.5 + 0.5 r)
    ms (one row: 0.1 + n), the unembedding 0.2 + 0.3 r, a head 0.2, an entropy decision 0.3 (0.1
    beyond the head), a pass 0.4 fixed. KV length does not matter here."""
    identity = {
        "format": FORMAT,
        "device": "cuda",
        "device_name": device,
        "dtype": "float16",
        "model_shape": shape,
        "head_architecture": architecture,
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
        decision_ms={"entropy": 0.3, "margin": 0.35},
        pass_fixed_ms=0.4,
    )


def full_trace(tokens: int = 10) -> TraceCounts:
    """`tokens` full-depth passes: one 8-layer segment, one unembedded row each."""
    t = TraceCounts(passes=tokens)
    t.segments[(8, 1, 0, 15, False, 0, 0, 0)] = tokens
    t.unembed[1] = tokens
    return t


def early_exit_trace() -> TraceCounts:
    """10 passes: 6 exit at the head after 3 layers; 4 fail the check and go on through 5 more
    layers, 3 of them carrying 2 exited tokens each (their KV fill) and unembedding 3 rows."""
    t = TraceCounts(passes=10)
    t.segments[(3, 1, 0, 15, True, 0, 0, 0)] = 6
    t.segments[(3, 1, 0, 15, False, 0, 0, 0)] = 4
    t.segments[(5, 1, 2, 15, False, 0, 0, 0)] = 3
    t.segments[(5, 1, 0, 15, False, 0, 0, 0)] = 1
    t.checks[(2, True)] = 6
    t.checks[(2, False)] = 4
    t.unembed[3] = 3
    t.unembed[1] = 1
    return t


# Worked out by hand from make_profile (ms per output token, 10 tokens):
# full: 10 x (0.1 + 8 x 1.0 + 0.5 unembedding + 0.4 fixed) / 10 = 9.0
# early exit: drafts 6 x 3.1 = 18.6; full-depth first segments 4 x 3.1 = 12.4; 3 x (0.1 + 5 x 2.0)
# = 30.3, a third new rows (10.1), two thirds KV fill (20.2); 1 x 5.1; heads 10 x 0.2 = 2.0;
# decisions 10 x 0.1 = 1.0; unembedding 3 x 1.1 + 0.5 = 3.8; fixed 10 x 0.4 = 4.0 -> 77.2 / 10.
FULL_MS = 9.0
EARLY_EXIT_MS = {
    "layers_full": 2.76,
    "layers_draft": 1.86,
    "layers_verify": 0.0,
    "layers_fill": 2.02,
    "head_matmuls": 0.2,
    "exit_decisions": 0.1,
    "unembedding": 0.38,
    "pass_fixed": 0.4,
}


def run_record(
    mode: str,
    measured_ms: float,
    full_measured_ms: float,
    trace: TraceCounts | None = None,
    ci: tuple[float, float] | None = None,
    profile: CostProfile | None = None,
    shape: str = SHAPE,
    **config,
) -> dict:
    """A record as the runner writes it: timing protocol fields, and prediction fields computed
    by the runner's own ``predict_run`` with ``profile``."""
    profile = profile or make_profile()
    trace = trace or full_trace()
    mode_summary = {"trace": trace.to_json(), "decode_tokens": 10, "tpot_ms_mean": measured_ms}
    full_summary = {"trace": full_trace().to_json(), "decode_tokens": 10, "tpot_ms_mean": full_measured_ms}
    if mode == "full":
        full_summary = mode_summary
    prediction = predict_run(profile, mode, "entropy", mode_summary, full_summary)
    speedup = full_measured_ms / measured_ms
    low, high = ci or (speedup, speedup)
    metrics = {
        "speedup": speedup,
        "speedup_ci_low": low,
        "speedup_ci_high": high,
        "within_noise": bool(low <= 1.0 <= high),
        "timing_samples": 8,
        "tpot_ms": measured_ms,
        "tpot_ms_mean": measured_ms,
        "full_tpot_ms": full_measured_ms,
        "full_tpot_ms_mean": full_measured_ms,
        "heldout_agreement_at_target": 0.8,
        "flops_saved": 0.1 if mode == "early-exit" else 0.0,
        "outputs_equal_full": mode != "early-exit",
        **prediction,
        "model_shape": shape,
        "trace": mode_summary["trace"],
        "full_trace": full_summary["trace"],
        "decode_tokens": 10,
        "full_decode_tokens": 10,
    }
    flat = {
        "model.name": "m",
        "mode.name": mode,
        "metric.name": "entropy",
        "calibration.target": 0.8,
        "heads.architecture": "linear",
        "heads.rank": 0,
        "bench.cuda_graphs": False,
        **config,
    }
    return make_record(flat, metrics, {"device": "cpu"})


def old_record(mode: str = "dssd", speedup: float = 1.3) -> dict:
    """A record from before the timing protocol and the cost model: a bare speedup."""
    flat = {"model.name": "m", "mode.name": mode, "metric.name": "entropy", "calibration.target": 0.6}
    return make_record(flat, {"speedup": speedup, "heldout_agreement_at_target": 0.9}, {"device": "cpu"})


@pytest.fixture
def store(tmp_path) -> Path:
    """full, early-exit (an interval above 1), DSSD within noise, LayerSkip, and one old record."""
    s = ResultStore(tmp_path / "records.jsonl")
    s.append(run_record("full", 9.5, 9.5))
    s.append(
        run_record("early-exit", 7.0, 9.0, early_exit_trace(), ci=(1.2, 1.4), **{"calibration.target": 0.7})
    )
    s.append(run_record("dssd", 9.6, 9.0, ci=(0.88, 1.01)))
    ls = {"mode.exit_layer": 2, "mode.draft_length": 4}
    s.append(run_record("layerskip", 10.0, 9.2, early_exit_trace(), ci=(0.85, 0.95), **ls))
    s.append(old_record())
    return s.path


@pytest.fixture
def df(store) -> pd.DataFrame:
    return load_results(store)


# ---------------------------------------------------------------- tidy columns


def test_cost_categories_mirror_the_cost_model():
    assert tuple(COST_CATEGORIES) == tuple(CATEGORIES)


def test_new_fields_get_tidy_numeric_columns_and_old_records_get_nan(df):
    ee = df[df["mode"] == "early-exit"].iloc[0]
    assert (ee["speedup_ci_low"], ee["speedup_ci_high"], ee["within_noise"]) == (1.2, 1.4, False)
    assert ee["predicted_tpot_ms"] == pytest.approx(sum(EARLY_EXIT_MS.values()))
    assert ee["prediction_error"] == pytest.approx(7.72 / 7.0 - 1)
    assert ee["full_predicted_tpot_ms"] == pytest.approx(FULL_MS)
    for category, value in EARLY_EXIT_MS.items():
        assert ee[f"time_ms.{category}"] == pytest.approx(value)
    assert ee["full_time_ms.layers_full"] == pytest.approx(8.1)
    assert df.loc[df["mode"] == "dssd", "within_noise"].iloc[0] is True
    old = df.iloc[-1]
    assert old["speedup"] == 1.3 and pd.isna(old["within_noise"])
    numeric = [
        "speedup_ci_low",
        "predicted_tpot_ms",
        "prediction_error",
        "tpot_ms_mean",
        "time_ms.pass_fixed",
    ]
    assert old[numeric].isna().all()
    assert all(pd.api.types.is_float_dtype(df[c]) for c in numeric)


# ---------------------------------------------------------------- speedup interval


def _interval_bars(ax) -> list[tuple[float, float, float]]:
    """(low, high, y) of every interval bar drawn on ``ax``."""
    out = []
    for c in ax.collections:
        if isinstance(c, LineCollection) and c.get_gid() == "speedup_ci":
            out += [(seg[0][0], seg[1][0], seg[0][1]) for seg in c.get_segments()]
    return sorted(out)


def test_speed_accuracy_draws_each_speedup_interval_as_a_horizontal_bar(df):
    (ax,) = fig_speed_accuracy(df, "speedup").axes
    # early-exit's agreement delta is 0.8 - 1; lossless runs sit on 0. full (the baseline) and the
    # old record (no interval) get no bar.
    np.testing.assert_allclose(_interval_bars(ax), [(0.85, 0.95, 0.0), (0.88, 1.01, 0.0), (1.2, 1.4, -0.2)])
    (ax,) = fig_speed_accuracy(df, "flops_saved").axes
    assert _interval_bars(ax) == []  # the interval is of the speedup only
    only_old = df[df["speedup_ci_low"].isna()]
    (ax,) = fig_speed_accuracy(only_old, "speedup").axes
    assert _interval_bars(ax) == []


def test_summary_prints_the_interval_and_marks_runs_within_noise(df, tmp_path):
    text = write_summary(df, tmp_path, "records.jsonl").read_text()
    measured = text.split("## Measured")[1].split("## Cost model")[0]
    rows = {line.split(" | ")[1]: line for line in measured.splitlines() if line.startswith("| m |")}
    assert "| speedup [95% CI] | within noise |" in measured
    assert "| 1.00× (baseline) | — |" in rows["full"]
    assert "| 1.29× [1.20–1.40] | no |" in rows["early-exit"]
    dssd = [line for line in measured.splitlines() if "| dssd |" in line]
    assert any("| 0.94× [0.88–1.01] | ≈ 1 |" in line for line in dssd)
    assert any("| 1.30× | — |" in line for line in dssd)  # the old record: bare ratio, unknown noise
    assert "| 0.92× [0.85–0.95] | no |" in rows["layerskip"]


# ---------------------------------------------------------------- where the time goes


def _bars(ax) -> dict[str, list[tuple[float, float, float]]]:
    """category -> [(y, left, width)] of the stacked bars."""
    out: dict[str, list] = {}
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_gid() in COST_CATEGORIES:
            y = patch.get_y() + patch.get_height() / 2
            out.setdefault(patch.get_gid(), []).append((y, patch.get_x(), patch.get_width()))
    return out


def test_a_propagate_run_pays_its_kv_projections_and_no_fill(tmp_path):
    """6 of 10 tokens exit after 3 layers and project their K/V for the 5 layers they skipped."""
    trace = TraceCounts(passes=10)
    trace.segments[(3, 1, 0, 15, True, 0, 0, 0)] = 6
    trace.segments[(8, 1, 0, 15, False, 0, 0, 0)] = 4
    trace.checks.update({(2, True): 6, (2, False): 4})
    trace.unembed[1] = 4
    trace.projections[(5, 1)] = 6
    profile = make_profile()
    profile.projection_layer_ms = 0.05
    s = ResultStore(tmp_path / "records.jsonl")
    s.append(run_record("full", 9.5, 9.5, profile=profile))
    s.append(run_record("early-exit", 6.0, 9.0, trace, profile=profile, **{"engine.kv": "propagate"}))
    (ax,) = fig_time_breakdown(load_results(s.path)).axes
    bars = _bars(ax)
    full_bar, propagate_bar = bars["kv_projections"]
    assert full_bar[2] == 0 and propagate_bar[0] == pytest.approx(1)
    assert propagate_bar[2] == pytest.approx(6 * 5 * 0.05 / 10)
    assert "layers_fill" not in bars


def _gid(ax, gid: str) -> PathCollection:
    (found,) = [c for c in ax.collections if c.get_gid() == gid]
    return found


def test_time_breakdown_stacks_each_runs_categories_and_marks_its_measured_time(df):
    (ax,) = fig_time_breakdown(df).axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [
        "full (median of 4 baselines)",
        "early-exit · entropy t=0.7",
        "DSSD · entropy t=0.8",
        "LayerSkip E=2 K=4",
    ]
    bars = _bars(ax)
    # Every category is paid by some run here (verification by LayerSkip's pending rows alone),
    # but K/V projections, which only an engine.kv=propagate run pays (the next test).
    assert set(bars) == set(COST_CATEGORIES) - {"kv_projections"}
    ee = df[df["mode"] == "early-exit"].iloc[0]
    left = 0.0
    for category in [c for c in COST_CATEGORIES if c in bars]:
        y, x, width = bars[category][1]
        assert y == pytest.approx(1) and x == pytest.approx(left)
        assert width == pytest.approx(ee[f"time_ms.{category}"])
        left += width
    assert left == pytest.approx(7.72)
    # LayerSkip carries pending rows as verification, not as KV fill.
    assert bars["layers_verify"][3][2] == pytest.approx(2.02) and bars["layers_fill"][3][2] == 0
    # The full bar: every run's baseline (here all priced alike), 8.1 layers + 0.5 + 0.4.
    assert bars["layers_full"][0][2] == pytest.approx(8.1) and bars["pass_fixed"][0][2] == pytest.approx(0.4)
    measured = _gid(ax, "measured").get_offsets()
    # Measured means: median of the baselines (9.5, 9.0, 9.0, 9.2), then each run's own.
    assert measured[:, 0].tolist() == pytest.approx([9.1, 7.0, 9.6, 10.0])
    assert measured[:, 1].tolist() == [0, 1, 2, 3]
    assert "Where the time goes" in ax.get_title()


def test_time_breakdown_has_a_panel_per_timing_regime(store):
    ResultStore(store).append(run_record("dssd", 3.0, 3.5, **{"bench.cuda_graphs": True}))
    df = load_results(store)
    titles = sorted(ax.get_title() for ax in fig_time_breakdown(df).axes if ax.get_visible())
    assert titles == ["Where the time goes: m", "Where the time goes: m · CUDA graphs"]
    graphed = [ax for ax in fig_time_breakdown(df).axes if "CUDA" in ax.get_title()][0]
    assert [t.get_text() for t in graphed.get_yticklabels()] == ["full", "DSSD · entropy t=0.8"]
    assert _gid(graphed, "measured").get_offsets()[:, 0].tolist() == pytest.approx([3.5, 3.0])


# ---------------------------------------------------------------- predicted vs measured


def test_predicted_vs_measured_plots_every_run_and_baseline_with_the_line_and_band(df):
    (ax,) = fig_predicted_vs_measured(df).axes
    points = {mode: _gid(ax, f"points:{mode}").get_offsets().tolist() for mode in ("full", "early-exit")}
    # full: the full run once, then the three other runs' baselines (measured 9.0, 9.0, 9.2).
    np.testing.assert_allclose(sorted(points["full"]), [[9.0, 9.0], [9.0, 9.0], [9.2, 9.0], [9.5, 9.0]])
    np.testing.assert_allclose(points["early-exit"], [[7.0, 7.72]])
    # LayerSkip: the early-exit trace without the decisions' 0.1 ms per token.
    np.testing.assert_allclose(_gid(ax, "points:layerskip").get_offsets(), [[10.0, 7.62]])
    np.testing.assert_allclose(_gid(ax, "points:dssd").get_offsets(), [[9.6, 9.0]])
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == "band"]
    vertices = band.get_paths()[0].vertices
    top = ax.get_xlim()[1]
    at_top = sorted(v[1] for v in vertices if v[0] == pytest.approx(top))
    assert at_top[0] == pytest.approx(0.85 * top) and at_top[-1] == pytest.approx(1.15 * top)
    (identity,) = [line for line in ax.lines if line.get_gid() == "identity"]
    assert identity.get_xydata().tolist() == [[0.0, 0.0], [top, top]]
    # Median |error| per mode in the legend: full's errors are 0, 0, 9/9.2 - 1, 9/9.5 - 1.
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    full_median = np.median([0, 0, abs(9 / 9.2 - 1), abs(9 / 9.5 - 1)])
    assert f"full (median |error| {full_median:.0%})" in labels
    assert f"early-exit (median |error| {7.72 / 7 - 1:.0%})" in labels


def test_speedup_figure_sets_each_runs_predicted_speedup_against_its_measured_one(df):
    (ax,) = fig_speedup_predicted_vs_measured(df).axes
    # measured = full baseline / run (mean times); predicted = priced full / priced run.
    np.testing.assert_allclose(_gid(ax, "points:early-exit").get_offsets(), [[9 / 7, 9 / 7.72]])
    np.testing.assert_allclose(_gid(ax, "points:dssd").get_offsets(), [[9 / 9.6, 9 / 9.0]])
    np.testing.assert_allclose(_gid(ax, "points:layerskip").get_offsets(), [[9.2 / 10, 9 / 7.62]])
    assert not [c for c in ax.collections if c.get_gid() == "points:full"]  # 1 by definition
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[2:] == [
        f"early-exit (median |error| {abs((9 / 7.72) / (9 / 7) - 1):.0%})",
        f"DSSD (median |error| {abs((9 / 9.0) / (9 / 9.6) - 1):.0%})",
        f"LayerSkip (median |error| {abs((9 / 7.62) / (9.2 / 10) - 1):.0%})",
    ]
    low, high = ax.get_xlim()
    assert low < 9.2 / 10 and high > 9 / 7.62 and ax.get_ylim() == (low, high)


def test_speedup_figure_needs_a_run_beside_full(store):
    only_full = load_results(store)
    only_full = only_full[only_full["mode"] == "full"]
    with pytest.raises(NoData, match="other than full"):
        fig_speedup_predicted_vs_measured(only_full)


def test_profile_sources_count_interleaved_runs_and_call_the_rest_cached():
    runs = pd.DataFrame({"profile_source": ["interleaved", None, "cached", "interleaved"]})
    text = profile_sources(runs)
    assert "Profiles: 2 run(s) timed their own beside their samples" in text
    assert "2 used one measured once and cached" in text


def test_summary_reports_the_median_prediction_error_per_mode(df, tmp_path):
    text = write_summary(df, tmp_path, "records.jsonl").read_text()
    section = text.split("## Cost model: predicted vs measured")[1].split("## Published")[0]
    full_median = np.median([0, 0, abs(9 / 9.2 - 1), abs(9 / 9.5 - 1)])
    assert f"| m | eager | full | 4 | {full_median:.1%} | 100% | — |" in section
    # Speedup error: predicted speedup (9 / 7.72) over the measured one (9 / 7), minus 1.
    ee_speedup_error = (9 / 7.72) / (9 / 7) - 1
    ee = f"| m | eager | early-exit | 1 | {7.72 / 7 - 1:.1%} | 100% | {abs(ee_speedup_error):.1%} |"
    assert ee in section
    assert f"| m | eager | layerskip | 1 | {abs(7.62 / 10 - 1):.1%} | 0% |" in section
    row = "| m | eager | early-exit | fill | all | entropy | 0.7 | — | — | 7.000 | 7.720 | +10.3% |"
    assert row in section
    assert f"| 1.17 | 1.29 | {ee_speedup_error:+.1%} |" in section
    # These records predate bench.profile: every priced run counts as cached.
    assert "Profiles: 0 run(s) timed their own beside their samples" in section
    assert "4 used one measured once and cached" in section


def test_new_figures_skip_records_from_before_the_cost_model(df, tmp_path):
    old = df[df["predicted_tpot_ms"].isna()]
    for draw in (fig_time_breakdown, fig_predicted_vs_measured):
        with pytest.raises(NoData, match="before the cost model|predicted"):
            draw(old)
    written, skipped = make_all(old, tmp_path)
    assert {"time_breakdown", "predicted_vs_measured", "speedup_predicted_vs_measured"} <= set(skipped)
    assert "speed_accuracy_speedup" in written
    text = write_summary(old, tmp_path, "x", written, skipped).read_text()
    assert "No run has a predicted time per token (records from before the cost model)." in text
    # Mixed with new records, old ones are simply left out of both figures.
    assert len(_gid(fig_time_breakdown(df).axes[0], "measured").get_offsets()) == 4


# ---------------------------------------------------------------- projection


def test_projection_reprices_each_trace_with_the_given_profile(df):
    gpu = make_profile(device="Other GPU")
    gpu.layer_ms = [[0.5, 0.5], [0.75, 0.75]]  # half the layer time; nothing else changes
    result = project(df, gpu)
    table = result.table.set_index("mode")
    assert list(table.index) == ["full", "early-exit", "dssd", "layerskip"]
    # full: 0.1 + 8 x 0.5 + 0.5 + 0.4.
    assert table["projected_full_tpot_ms"].tolist() == pytest.approx([5.0] * 4)
    # early exit: drafts 6 x 1.6, first segments 4 x 1.6, 3 x (0.1 + 5 x 1.0), 1 x 2.6, then heads 2.0,
    # decisions 1.0, unembedding 3.8, fixed 4.0, over 10 tokens.
    expected = (9.6 + 6.4 + 15.3 + 2.6 + 2.0 + 1.0 + 3.8 + 4.0) / 10
    assert table.loc["early-exit", "projected_tpot_ms"] == pytest.approx(expected)
    assert table.loc["early-exit", "projected_speedup"] == pytest.approx(5.0 / expected)
    assert table.loc["early-exit", "projected_time_ms.layers_fill"] == pytest.approx(1.02)
    # LayerSkip pays no decision beyond the head: 0.1 less per token.
    assert table.loc["layerskip", "projected_tpot_ms"] == pytest.approx(expected - 0.1)
    assert result.no_trace == ["m DSSD · entropy t=0.6 [" + df.iloc[-1]["run_id"][:8] + "]"]
    # Priced with the profile they were recorded with, the projection is the stored prediction.
    same = project(df, make_profile()).table
    recorded = df.dropna(subset=["predicted_tpot_ms"]).set_index("run_id")["predicted_tpot_ms"]
    assert same.set_index("run_id")["projected_tpot_ms"].to_dict() == pytest.approx(recorded.to_dict())


def test_projection_refuses_a_profile_of_another_shape_or_head_architecture_naming_both(df):
    with pytest.raises(ProjectionRefused) as err:
        project(df, make_profile(shape="GPTNeoXForCausalLM layers=24 hidden=1024"))
    message = str(err.value)
    assert f"model_shape: profile 'GPTNeoXForCausalLM layers=24 hidden=1024', runs '{SHAPE}'" in message
    assert "(4 run(s))" in message
    with pytest.raises(ProjectionRefused, match="head_architecture: profile 'lowrank', runs 'linear'"):
        project(df, make_profile(architecture="lowrank"))


def test_projection_projects_matching_runs_and_names_the_skipped(store):
    other = "GPTNeoXForCausalLM layers=12 hidden=768"
    ResultStore(store).append(run_record("dssd", 9.0, 9.0, profile=make_profile(shape=other), shape=other))
    corrupt = run_record("early-exit", 7.0, 9.0, **{"calibration.target": 0.5})
    corrupt["metric.trace"] = "{not json"
    ResultStore(store).append(corrupt)
    result = project(load_results(store), make_profile())
    assert len(result.table) == 4 and set(result.table["mode"]) == {"full", "early-exit", "dssd", "layerskip"}
    notes = result.notes()
    assert any("unreadable pass trace" in n and "early-exit · entropy t=0.5" in n for n in notes)
    assert any(n.startswith("skipped 1 run(s) without a pass trace") for n in notes)
    (shape_note,) = [n for n in notes if "of another model shape or head architecture" in n]
    assert f"profile '{SHAPE}', runs '{other}'" in shape_note and "m DSSD · entropy t=0.8 [" in shape_note


def test_projection_without_any_trace_is_refused(df):
    with pytest.raises(ProjectionRefused, match="none of the 1 stored run"):
        project(df[df["predicted_tpot_ms"].isna()], make_profile())


def _main(capsys, *args: str) -> tuple[int, str, str]:
    code = project_cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_and_prints_a_table_labelled_projected(store, tmp_path, capsys):
    profile = tmp_path / "gpu.json"
    make_profile(device="Other GPU").save(profile)
    out_dir = tmp_path / "out"
    code, out, err = _main(capsys, "--profile", str(profile), "--results", str(store), "--out", str(out_dir))
    assert code == 0, err
    assert out.startswith("# Projected time per token on Other GPU (float16, eager; key ")
    assert "Projected, not measured" in out
    header = next(line for line in out.splitlines() if line.startswith("| model |"))
    numbers = header.split(" | ")[-3:]
    assert numbers == ["projected full ms/token", "projected ms/token", "projected speedup |"]
    assert "speedup [95% CI]" not in out and "measured" not in header
    ee = next(line for line in out.splitlines() if "| early-exit |" in line)
    assert ee.endswith(f"| 9.0000 | 7.7200 | {9 / 7.72:.2f}× |")
    assert ee.startswith("| m | early-exit | fill | all | entropy |")  # KV and heads named (old record)
    assert "note: skipped 1 run(s) without a pass trace" in err
    assert out == (out_dir / "projected-gpu.md").read_text() + "\n"
    csv = pd.read_csv(out_dir / "projected-gpu.csv")
    assert [c for c in csv.columns if not c.startswith("projected_")] == [
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
    ]
    assert csv.loc[csv["mode"] == "early-exit", "projected_tpot_ms"].item() == pytest.approx(7.72)
    assert (out_dir / "projected-gpu.png").stat().st_size > 0
    assert (out_dir / "projected-gpu.pdf").read_bytes()[:4] == b"%PDF"
    fig = project_cli.fig_projected_speedup(project(load_results(store), make_profile(device="Other GPU")))
    (ax,) = fig.axes
    assert ax.get_title().startswith("Projected speedup (cost model, not measured)\non Other GPU")
    widths = [p.get_width() for p in ax.patches if p.get_gid() == "projected"]
    assert widths == pytest.approx([1.0, 9 / 7.72, 1.0, 9 / 7.62])  # LayerSkip decides nothing


def test_cli_refuses_a_mismatching_profile_with_both_named(store, tmp_path, capsys):
    profile = tmp_path / "big.json"
    make_profile(shape="GPTNeoXForCausalLM layers=24").save(profile)
    code, out, err = _main(
        capsys, "--profile", str(profile), "--results", str(store), "--out", str(tmp_path / "o")
    )
    assert code == 2 and out == ""
    assert err.startswith("error: profile Test GPU (float16, eager; key ")
    assert f"model_shape: profile 'GPTNeoXForCausalLM layers=24', runs '{SHAPE}'" in err
    assert not (tmp_path / "o").exists()


def test_cli_names_an_empty_or_missing_store_and_a_bad_profile_in_one_line(tmp_path, capsys):
    profile = tmp_path / "p.json"
    make_profile().save(profile)
    missing = tmp_path / "none.jsonl"
    code, _, err = _main(capsys, "--profile", str(profile), "--results", str(missing))
    assert code == 2 and err.startswith(f"error: no results store at {missing}: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, err = _main(capsys, "--profile", str(profile), "--results", str(empty))
    assert code == 2 and f"{empty} holds no loadable records" in err and len(err.strip().splitlines()) == 1
    code, _, err = _main(capsys, "--profile", str(tmp_path / "nope.json"), "--results", str(empty))
    assert code == 2 and err.strip() == f"error: no cost profile at {tmp_path / 'nope.json'}"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"identity": {"format": "something/else"}}))
    code, _, err = _main(capsys, "--profile", str(bad), "--results", str(empty))
    assert code == 2 and "not an earlyexit.profile/1 cost profile (format 'something/else')" in err
    identity = tmp_path / "abc.json"
    identity.write_text(json.dumps({"format": FORMAT}))
    make_profile().save(tmp_path / "abc.result.json")
    code, _, err = _main(capsys, "--profile", str(identity), "--results", str(empty))
    assert code == 2 and f"the profile itself is {tmp_path / 'abc.result.json'}" in err


# ---------------------------------------------------------------- notebook


def test_cost_model_notebook_draws_its_three_figures(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EARLYEXIT_RESULTS", str(store))
    monkeypatch.setenv("EARLYEXIT_FIGURES", str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    notebook = ROOT / "analysis" / "notebooks" / "cost_model.py"
    assert notebook.read_text().startswith("# %% [markdown]")
    runpy.run_path(str(notebook), run_name="__main__")
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == {"time_breakdown.png", "predicted_vs_measured.png", "speedup_predicted_vs_measured.png"}
    out = capsys.readouterr().out
    assert "early-exit · entropy t=0.7" in out and "median_abs_error" in out and "speedup_error" in out
    assert {"time_breakdown", "predicted_vs_measured", "speedup_predicted_vs_measured"} <= set(FIGURES)


def test_projection_across_dtypes_is_refused_unless_asked_for(df):
    runs = df.assign(dtype="float32")  # the profile was measured in float16
    with pytest.raises(
        ProjectionRefused, match="dtype: profile 'float16', runs 'float32'.*--allow-dtype-change"
    ):
        project(runs, make_profile())
    allowed = project(runs, make_profile(), allow_dtype_change=True).table
    assert (
        allowed["projected_tpot_ms"].tolist()
        == project(df, make_profile()).table["projected_tpot_ms"].tolist()
    )
