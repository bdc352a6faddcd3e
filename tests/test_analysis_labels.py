"""analysis/: figures and summary that say what they show. Labels that never overprint, a legend
naming every marker style, accuracy with an interval, an acceptance headline only between comparable
runs, run tables that name KV strategy and head architecture, and prose whose numbers come from the
records. All on synthetic records written with the runner's own record format (no model runs)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Annotation

from analysis.accuracy import Z95
from analysis.figures import FIGURES, make_all
from analysis.load import count_store, load_results
from analysis.measures import PREDICTION_BAND
from analysis.pareto import front
from analysis.published import compare, load_published
from analysis.summary import write_summary
from earlyexit.harness.results import ResultStore, make_record

LIMIT = 200
FULL_ACC = 0.50
ALL_HEADS = [1, 2, 4, 5]


def record(mode: str, speedup: float, acc: float = FULL_ACC, config: dict | None = None, **metrics) -> dict:
    """A finished run on model ``m`` scored on one lm-eval task ``t`` of ``LIMIT`` documents (no
    ``_stderr`` keys, as the runner writes them today); lossless modes reproduce full."""
    lossless = mode in ("full", "dssd", "layerskip")
    flat = {
        "model.name": "m",
        "mode.name": mode,
        "metric.name": "entropy",
        "calibration.target": 0.8,
        "heads.architecture": "linear",
        "heads.rank": 0,
        "task.limit": LIMIT,
        **(config or {}),
    }
    flat = {k: v for k, v in flat.items() if v is not None}
    values = {
        "speedup": speedup,
        "flops_saved": 0.0,
        "outputs_equal_full": lossless,
        "heldout_agreement_at_target": 1.0 if lossless else 0.9,
        "acc.t.acc": acc,
        "acc_full.t.acc": FULL_ACC,
        "acc_delta.t.acc": acc - FULL_ACC,
        "machine_busy": False,
        **metrics,
    }
    return make_record(flat, values, {"device": "cpu"})


def dssd(target: float, speedup: float, acceptance: float, kept=ALL_HEADS, **config) -> dict:
    config = {"calibration.target": target, **config}
    return record("dssd", speedup, config=config, acceptance_rate=acceptance, heads_kept=kept)


def layerskip(exit_layer: int, speedup: float, acceptance: float) -> dict:
    config = {"mode.exit_layer": exit_layer, "mode.draft_length": 4}
    return record("layerskip", speedup, config=config, acceptance_rate=acceptance)


def early(target: float, speedup: float, acc: float, saved: float, kv: str = "fill", **extra) -> dict:
    config = {"calibration.target": target, "engine.kv": kv, **extra.pop("config", {})}
    ci = {"speedup_ci_low": speedup - 0.1, "speedup_ci_high": speedup + 0.1}
    return record("early-exit", speedup, acc, config, flops_saved=saved, **ci, **extra)


RECORDS = [
    record("full", 1.0),
    dssd(0.6, 1.10, 0.60),
    dssd(0.8, 1.16, 0.62),
    dssd(0.9, 1.16, 0.58),  # the same point as t=0.8: both on the front, their labels at one spot
    # Priced heads kept one head: the highest acceptance, and degenerate.
    dssd(0.8, 1.14, 0.90, kept=[3], **{"calibration.heads": "priced"}),
    # Low-rank heads, otherwise the linear t=0.8 run: a row of its own, never a duplicate.
    dssd(0.8, 1.12, 0.70, **{"heads.architecture": "lowrank", "heads.rank": 64}),
    layerskip(2, 1.05, 0.40),
    layerskip(4, 1.13, 0.45),
    early(0.6, 1.50, 0.450, 0.242),  # fill saving FLOPs: the summary must say so
    early(0.6, 1.52, 0.448, 0.300, kv="propagate"),  # beside fill t=0.6 on the front
    early(0.8, 1.30, 0.490, 0.100),
    early(0.7, 1.20, 0.470, 0.150, kv="skip", config={"task.limit": None}),  # no document count
    early(0.6, 2.00, 0.400, 0.350, config={"metric.name": "margin"}, machine_busy=True),
]


@pytest.fixture
def store(tmp_path) -> Path:
    s = ResultStore(tmp_path / "records.jsonl")
    for rec in RECORDS:
        s.append(rec)
    s.append(make_record({"model.name": "m", "mode.name": "full"}, {}, {"device": "cpu"}, status="failed"))
    return s.path


@pytest.fixture
def df(store) -> pd.DataFrame:
    return load_results(store)


@pytest.fixture
def summary(df, store, tmp_path) -> str:
    written, skipped = make_all(df, tmp_path / "figs")
    path = write_summary(df, tmp_path / "figs", "records.jsonl", written, skipped, counts=count_store(store))
    return path.read_text()


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n")[1].split("\n## ")[0]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in ``text``, each as a list of dicts keyed by its header."""
    out, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            lines.append(line)
            continue
        if lines:
            rows = [[c.strip() for c in x.strip().strip("|").split(" | ")] for x in lines if "---|" not in x]
            out.append([dict(zip(rows[0], r, strict=True)) for r in rows[1:]])
            lines = []
    return out


def labels(ax) -> list[Annotation]:
    return [t for t in ax.texts if isinstance(t, Annotation)]


# ---------------------------------------------------------------- labels and legend


def test_speed_accuracy_labels_only_the_overall_front_and_never_overprint(df):
    fig = FIGURES["speed_accuracy_speedup"](df)
    (ax,) = fig.axes
    overall = front(df[~df["busy"]], "speedup", "acc_delta", by=["model"])
    want = sorted(
        (round(x, 6), round(y, 6))
        for x, y in overall.loc[overall["mode"] != "full", ["speedup", "acc_delta"]].to_numpy()
    )
    got = sorted((round(float(a.xy[0]), 6), round(float(a.xy[1]), 6)) for a in labels(ax))
    assert got == want
    assert got.count((1.16, 0.0)) == 2  # two runs at one point: their labels start on top of each other
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in labels(ax)]
    assert len(boxes) == 5
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def _styles(handles) -> set[tuple[str, bool]]:
    """(marker, filled) of every Line2D with a marker."""
    out = set()
    for h in handles:
        if isinstance(h, Line2D) and h.get_marker() not in (None, "None", "", " "):
            out.add((str(h.get_marker()), str(h.get_markerfacecolor()).lower() != "none"))
    return out


def test_speed_accuracy_legend_names_every_marker_style(df):
    for name in ("speed_accuracy_speedup", "speed_accuracy_flops"):
        (ax,) = FIGURES[name](df).axes
        legend = ax.get_legend()
        handles = legend.legend_handles
        drawn = _styles(line for line in ax.lines if line.get_gid() is None)
        named = _styles(handles)
        assert {m for m, _ in drawn} <= {m for m, _ in named}, name  # every mode's marker shape
        assert {f for _, f in drawn} == {True, False} and {f for _, f in named} >= {True, False}, name
        texts = {t.get_text() for t in legend.get_texts()}
        assert {"filled: on its series' front", "hollow: off its series' front"} <= texts
        assert {"full", "DSSD · entropy", "DSSD · entropy · priced heads", "LayerSkip"} <= texts
        assert "busy machine (off the fronts)" in texts
        assert any(isinstance(h, Patch) and h.get_hatch() == "////" for h in handles)
        assert "accuracy Δ 95% interval" in texts
        assert ("speedup 95% interval" in texts) == (name == "speed_accuracy_speedup")


# ---------------------------------------------------------------- accuracy with an interval


def binomial_half_width(acc: float) -> float:
    se = math.hypot(math.sqrt(acc * (1 - acc) / LIMIT), math.sqrt(FULL_ACC * (1 - FULL_ACC) / LIMIT))
    return Z95 * se


def test_accuracy_interval_is_drawn_and_tabulated_where_a_document_count_is_recorded(df, summary):
    (ax,) = FIGURES["speed_accuracy_speedup"](df).axes
    bars = {
        round(float(seg[0][0]), 6): (float(seg[0][1]), float(seg[1][1]))
        for c in ax.collections
        if isinstance(c, LineCollection) and c.get_gid() == "accuracy_ci"
        for seg in c.get_segments()
    }
    # Every lossy run with task.limit (busy one included), none for the one without, none for lossless.
    assert set(bars) == {1.5, 1.52, 1.3, 2.0}
    low, high = bars[1.5]
    assert low == pytest.approx(-0.05 - binomial_half_width(0.45))
    assert high == pytest.approx(-0.05 + binomial_half_width(0.45))
    text = section(summary, "Log-likelihood tasks: accuracy only, no speedup")
    rows = {r["run"]: r for r in tables(text)[0]}
    ee = rows["early-exit · entropy t=0.6"]
    h = binomial_half_width(0.45)
    assert ee["Δ 95% interval"] == f"[{-0.05 - h:+.3f}, {-0.05 + h:+.3f}]"
    assert ee["interval from"] == "binomial, n ≤ 200 (`task.limit`)"
    skip = rows["early-exit · entropy · KV skip t=0.7"]
    assert (skip["Δ 95% interval"], skip["interval from"]) == (
        "—",
        "none: no stderr or document count recorded",
    )
    assert rows["full"]["interval from"] == "lossless: outputs equal full's"
    assert "1 result(s) have neither, so no interval (and no bar in the figures)." in text
    points = section(summary, "Speed–accuracy figures: every point")
    no_bar = "No bar (none: no stderr or document count recorded): early-exit · entropy · KV skip t=0.7"
    assert f"{no_bar} · linear heads." in points


def test_lm_eval_standard_error_is_used_where_the_record_keeps_it(tmp_path):
    s = ResultStore(tmp_path / "r.jsonl")
    s.append(record("full", 1.0))
    s.append(early(0.6, 1.5, 0.45, 0.2, **{"acc.t.acc_stderr": 0.03, "acc_full.t.acc_stderr": 0.04}))
    df = load_results(s.path)
    text = write_summary(df, tmp_path, "r.jsonl").read_text()
    accuracy = tables(section(text, "Log-likelihood tasks: accuracy only, no speedup"))[0]
    row = next(r for r in accuracy if r["run"] != "full")
    assert row["interval from"] == "lm-eval stderr"
    assert row["Δ 95% interval"] == f"[{-0.05 - Z95 * 0.05:+.3f}, {-0.05 + Z95 * 0.05:+.3f}]"


# ---------------------------------------------------------------- acceptance


def test_acceptance_headline_leaves_out_a_one_head_dssd_run_and_says_why(df, summary):
    (ax,) = FIGURES["acceptance"](df).axes
    title = ax.get_title()
    assert f"= linear heads: {0.62 / 0.45:.2f}× (head drafts only)" in title  # not 0.90 / 0.45 (one head)
    assert f"{0.90 / 0.45:.2f}" not in title
    assert "published: 1.66× (DSSD paper)" in title
    assert "1 one-head DSSD run(s) left out of the ratio" in title
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert len(set(ticks)) == len(ticks)  # all-heads and priced-heads runs never share a label
    assert "DSSD entropy t=0.8 · priced heads (3) · linear heads" in ticks
    assert "DSSD entropy t=0.8 · all heads (1 2 4 5) · linear heads" in ticks
    hatched = [p for p in ax.patches if p.get_gid() == "left_out"]
    assert [round(p.get_width(), 6) for p in hatched] == [0.9]
    # The published ratio drawn once, against the linear heads' best LayerSkip: the low-rank DSSD
    # run has no LayerSkip run on its heads.
    lines = [line for line in ax.lines if line.get_gid() == "published_ratio"]
    assert [line.get_xdata()[0] for line in lines] == [pytest.approx(1.66 * 0.45)]
    table = compare(df, load_published()).query("arxiv_id == '2407.21082'")
    assert table["measured"].iloc[0] == pytest.approx(0.62 / 0.45)
    published = section(summary, "Published vs measured")
    assert (
        "Left out of the DSSD / LayerSkip ratio: DSSD · entropy · priced heads t=0.8 (heads kept: 3). "
        "DSSD with one head kept has no exit to choose between"
    ) in published


# ---------------------------------------------------------------- run tables


def is_run_table(rows: list[dict[str, str]]) -> bool:
    """A table with one row per run (not per mode, not per published number)."""
    header = set(rows[0]) if rows else set()
    per_run = "run" in header or "target" in header
    return per_run and "published" not in header


def test_every_run_table_names_kv_strategy_and_head_architecture(summary):
    run_tables = [t for t in tables(summary) if is_run_table(t)]
    assert len(run_tables) == 3  # measured, KV, log-likelihood accuracy (no workloads here)
    for rows in run_tables:
        assert {"head arch"} <= set(rows[0]) and ({"KV"} <= set(rows[0])), list(rows[0])
    measured = tables(section(summary, "Measured"))[0]
    twins = [r for r in measured if r["mode"] == "dssd" and r["target"] == "0.8" and r["heads"] == "all"]
    assert sorted(r["head arch"] for r in twins) == ["linear", "lowrank r=64"]
    records = section(summary, "Records and machine load")
    assert "The store holds 14 record line(s): 13 finished run(s) read; skipped 1 failed run(s)" in records


def test_unlabelled_points_are_listed_in_the_summary(summary):
    points = section(summary, "Speed–accuracy figures: every point")
    line = next(x for x in points.splitlines() if x.startswith("  - on the overall front (labelled)"))
    # Runs of two head architectures: each name says which.
    linear = "DSSD · entropy t=0.8 · linear heads (1.16×, +0.000), DSSD · entropy t=0.9 · linear heads"
    assert f"on the overall front (labelled): {linear} (1.16×, +0.000)," in line
    assert "DSSD · entropy t=0.8 · lowrank heads (1.12×, +0.000)" in line
    assert "off their series' front (hollow): DSSD · entropy t=0.6 · linear heads (1.10×, +0.000)" in line
    assert (
        "busy machine (hatched, on no front): early-exit · margin t=0.6 · linear heads (2.00×, -0.100)"
        in line
    )
    assert "full (1.00×, +0.000)" in line  # full runs no head: no architecture in its name


# ---------------------------------------------------------------- numbers in prose


NUMBER = re.compile(r"(?<![\w.])[+\-−]?(\d+(?:\.\d+)?)(?=×|%)|×(\d+(?:\.\d+)?)")


def prose(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(("|", "#"))]


def test_summary_prose_never_says_fill_saves_no_flops_and_states_what_it_saves(summary):
    kv = section(summary, "Exited tokens' KV: fill, propagate, skip")
    # Fill runs here save up to +35.0% (the busy margin run) and +24.2% at target 0.6.
    assert "`fill` +10.0% to +35.0% (3 run(s))" in kv and "`propagate` +30.0% (1 run(s))" in kv
    assert "| m | fill | linear | entropy | 0.6 | — | — | +24.2% |" in kv
    assert "no FLOPs" not in summary


def test_every_ratio_and_percentage_in_prose_is_in_the_data(summary):
    """Each number in a sentence followed by × or % is a table's number, a published number
    derived as the summary says, or a definition (the 95% intervals, the cost model's target)."""
    cells = {
        m for line in summary.splitlines() if line.startswith("|") for m in re.findall(r"\d+(?:\.\d+)?", line)
    }
    calm = load_published().query("arxiv_id == '2207.07061' and metric == 'layers_per_token'")
    definitions = {"95", f"{PREDICTION_BAND * 100:.0f}", f"{float(calm['value'].iloc[0]) / 8 * 100:.0f}"}
    for line in prose(summary):
        for match in NUMBER.finditer(line):
            number = match.group(1) or match.group(2)
            assert number in cells | definitions, (number, line)


def test_published_numbers_in_prose_follow_the_published_table(df, tmp_path):
    published = load_published()
    changed = published.copy()
    dssd = (changed["arxiv_id"] == "2407.21082") & (changed["metric"] == "acceptance_ratio_vs_layerskip")
    calm = changed["arxiv_id"] == "2207.07061"
    changed.loc[dssd, "value"] = 2.5
    changed.loc[calm & (changed["metric"] == "layers_per_token"), "value"] = 1.5
    changed.loc[calm & (changed["metric"] == "speedup_estimated"), "value"] = 4.25
    text = write_summary(df, tmp_path, "records.jsonl", published=changed).read_text()
    sentences = "\n".join(prose(text))
    assert "beside the published 2.5×" in sentences
    assert "1.5 of 8 decoder layers per token (19% of depth) and an *estimated* ×4.25" in sentences
    for stale in ("1.66", "1.73", "3.53"):
        assert stale not in sentences, stale
    assert np.isclose(published.loc[dssd, "value"].iloc[0], 1.66)  # the packaged table is untouched
