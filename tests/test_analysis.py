"""analysis/: Pareto fronts on hand-computed points; tidy loading rules; figures, summary, notebooks and
the CLI drawn from a small results set made by real runs of the embedded model."""

from __future__ import annotations

import json
import logging
import os
import re
import runpy
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_RUN
from hydra import compose, initialize_config_dir
from matplotlib.collections import PathCollection
from matplotlib.image import imread

from analysis.figures import FIGURES, make_all
from analysis.load import (
    COST_CATEGORIES,
    LOSSLESS_MODES,
    latest_per_config,
    load_results,
    load_wandb,
    per_head_table,
)
from analysis.pareto import accuracy_axis, front, mark_fronts, pareto_mask, run_name
from analysis.project import project
from analysis.published import CAVEATS, PUBLISHED_CSV, compare, hardware_match, load_published, model_match
from analysis.summary import write_summary
from earlyexit.harness import runner
from earlyexit.harness.results import EmptyResultsError, ResultStore, make_record
from earlyexit.measure.profile import CostProfile

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT.parent / "shared" / "docs" / "DESIGN.md"
RUNS = [
    ["mode=full"],
    *[
        ["mode=early-exit", f"metric={metric}", f"calibration.target={target}"]
        for metric in ("entropy", "margin")
        for target in (0.6, 0.8)
    ],
    ["mode=dssd"],
    ["mode=layerskip", "mode.exit_layer=2"],
    ["mode=layerskip", "mode.exit_layer=4"],
]


# ---------------------------------------------------------------- references read straight from the store


def raw_records(store: Path) -> list[dict]:
    """The stored records as written, one JSON object per line: no analysis code involved."""
    return [json.loads(line) for line in store.read_text().splitlines() if line.strip()]


def independent_acceptance_ratio(records: list[dict], key: str = "metric.acceptance_rate") -> float:
    """Best DSSD acceptance over best LayerSkip acceptance, from the records themselves."""
    best = {
        mode: max(r[key] for r in records if r["config.mode.name"] == mode) for mode in ("dssd", "layerskip")
    }
    return best["dssd"] / best["layerskip"]


def accuracy_proxy(record: dict) -> float:
    """Agreement delta vs full: 0 for a lossless run that reproduced full, else held-out agreement - 1."""
    if record["config.mode.name"] in LOSSLESS_MODES and record["metric.outputs_equal_full"]:
        return 0.0
    return record["metric.heldout_agreement_at_target"] - 1.0


def plotted_points(ax) -> set[tuple[float, float]]:
    """Every data marker drawn in a panel (lines with markers, scatter collections), rounded;
    decorations that carry a gid (e.g. interval caps) are not data points."""
    points = set()
    for line in ax.lines:
        if line.get_marker() not in (None, "None", "") and line.get_gid() is None:
            points |= {(round(float(x), 9), round(float(y), 9)) for x, y in line.get_xydata()}
    for collection in ax.collections:
        if isinstance(collection, PathCollection) and collection.get_gid() is None:
            points |= {(round(float(x), 9), round(float(y), 9)) for x, y in collection.get_offsets()}
    return points


def check_measured_table(text: str, records: list[dict]) -> None:
    """summary.md's measured table holds each record's speedup, FLOPs saved and acceptance."""
    measured = text.split("## Measured")[1].split("\n## ")[0]
    lines = [line for line in measured.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    rows = [dict(zip(header, row, strict=True)) for row in cells]
    speedup = next(h for h in header if h.startswith("speedup"))  # may carry an interval after it
    cells = ("KV", "FLOPs saved", "acceptance", "acceptance (demo)")
    got = sorted((r["mode"], r[speedup].split(" ")[0], *(r[c] for c in cells)) for r in rows)
    want = sorted(
        (
            r["config.mode.name"],
            f"{r['metric.speedup']:.2f}×",
            r.get("config.engine.kv", "fill"),
            f"{r['metric.flops_saved']:+.1%}",
            *(
                f"{r[k]:.3f}" if np.isfinite(r[k]) else "—"
                for k in ("metric.acceptance_rate", "metric.acceptance_rate_demo")
            ),
        )
        for r in records
    )
    assert got == want


# ---------------------------------------------------------------- Pareto fronts on known points


def test_pareto_front_of_hand_computed_points():
    # (1, .9) fastest-accurate corner; (2, .8) and (3, .1) trade off; (2.5, .05) is beaten by (3, .1);
    # (1.5, .85) trades off with (1, .9) and (2, .8); (0.5, .5) is beaten by everything above it.
    x = [1.0, 2.0, 3.0, 2.5, 1.5, 0.5]
    y = [0.9, 0.8, 0.1, 0.05, 0.85, 0.5]
    assert pareto_mask(x, y).tolist() == [True, True, True, False, True, False]


def test_ties_in_one_coordinate_are_dominated_and_exact_duplicates_are_kept():
    # Same speed, less accurate -> dominated; same accuracy, slower -> dominated.
    assert pareto_mask([2, 2, 1], [0.5, 0.3, 0.5]).tolist() == [True, False, False]
    # Identical points do not dominate each other: both stay on the front (or both leave it).
    assert pareto_mask([2, 2, 1], [0.5, 0.5, 0.1]).tolist() == [True, True, False]
    assert pareto_mask([1, 1, 3], [0.5, 0.5, 0.6]).tolist() == [False, False, True]


def test_nan_and_infinite_points_are_never_on_the_front_and_never_dominate():
    x = [1.0, np.nan, 2.0, np.inf, 0.5]
    y = [0.5, 9.0, np.nan, 9.0, 0.4]
    # Without the NaN/inf rows, (1, .5) dominates (.5, .4).
    assert pareto_mask(x, y).tolist() == [True, False, False, False, False]
    assert pareto_mask([np.nan], [np.nan]).tolist() == [False]
    assert pareto_mask([], []).tolist() == []


def test_direction_of_each_axis_can_be_chosen():
    # Minimise y (e.g. a loss): (2, .1) beats (2, .5); (1, .05) trades off.
    assert pareto_mask([2, 2, 1], [0.1, 0.5, 0.05], maximize=(True, False)).tolist() == [True, False, True]


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="equal length"):
        pareto_mask([1, 2], [1])


def test_fronts_are_computed_within_each_model_and_series_and_sorted_by_x():
    df = pd.DataFrame(
        {
            "model": ["a", "a", "a", "a", "b"],
            "mode": ["early-exit", "early-exit", "early-exit", "layerskip", "early-exit"],
            "metric": ["entropy", "entropy", "margin", "entropy", "entropy"],
            "speedup": [2.0, 1.0, 0.5, 0.4, 0.1],
            "acc_delta": [-0.2, -0.1, -0.9, 0.0, -1.0],
        }
    )
    marked = mark_fronts(df, "speedup", "acc_delta")
    # Each series alone: all on their own fronts, even (0.5, -0.9), which (1, -0.1) would dominate.
    assert marked["on_front"].all()
    assert marked["group"].tolist() == [  # no KV column (a frame built by hand): fill
        "early-exit · entropy · KV fill",
        "early-exit · entropy · KV fill",
        "early-exit · margin · KV fill",
        "LayerSkip",
        "early-exit · entropy · KV fill",
    ]
    overall = front(df, "speedup", "acc_delta", by=["model"])
    assert overall[["model", "speedup"]].values.tolist() == [["a", 0.4], ["a", 1.0], ["a", 2.0], ["b", 0.1]]


# ---------------------------------------------------------------- tidy loading rules (synthetic store)


def _record(mode: str, metrics: dict, status: str = "ok", **config) -> dict:
    flat = {
        "model.name": "m",
        "mode.name": mode,
        "metric.name": "entropy",
        "calibration.target": 0.8,
        **config,
    }
    return make_record(flat, metrics, {"device": "cpu"}, status=status)


def test_tidy_picks_accuracy_over_perplexity_and_gives_lossless_modes_zero_loss(tmp_path, caplog):
    store = ResultStore(tmp_path / "r.jsonl")
    acc = {"acc_delta.t1.acc": -0.2, "acc_delta.t1.perplexity": 30.0, "acc_delta.t2.acc_norm": -0.1}
    store.append(_record("early-exit", {"speedup": 1.5, **acc, "heldout_agreement_at_target": 0.7}))
    store.append(_record("dssd", {"speedup": 1.1, "outputs_equal_full": True}))
    store.append(
        _record("layerskip", {"speedup": 0.9, "outputs_equal_full": False}, **{"mode.exit_layer": 3})
    )
    store.append(_record("full", {}, status="failed"))
    with caplog.at_level(logging.WARNING, logger="analysis.load"):
        df = load_results(store.path)
    assert df["mode"].tolist() == ["early-exit", "dssd", "layerskip"]  # the failed run is left out
    assert df["acc_delta"].iloc[0] == pytest.approx(-0.15)  # mean of t1.acc and t2.acc_norm, not perplexity
    assert df["agreement_delta"].iloc[0] == pytest.approx(-0.3)
    assert df["acc_delta"].iloc[1] == 0.0 and df["agreement_delta"].iloc[1] == 0.0
    # A "lossless" run whose output differed from full must not be credited with zero loss.
    assert np.isnan(df["acc_delta"].iloc[2]) and np.isnan(df["agreement_delta"].iloc[2])
    assert "did not reproduce the full model's output" in caplog.text
    # metric and target mean nothing for LayerSkip.
    assert pd.isna(df["metric"].iloc[2]) and np.isnan(df["target"].iloc[2]) and df["exit_layer"].iloc[2] == 3
    assert len(load_results(store.path, include_failed=True)) == 4
    assert accuracy_axis(df)[0] == "acc_delta"


def test_eager_and_cuda_graph_timings_get_their_own_fronts_and_panels(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    for graphs, speedup in ((False, 1.2), (True, 2.5)):
        for target, delta in ((0.6, -0.3), (0.9, -0.1)):
            metrics = {"speedup": speedup / target, "heldout_agreement_at_target": 1 + delta}
            flat = {"calibration.target": target, "bench.cuda_graphs": graphs}
            store.append(_record("early-exit", metrics, **flat))
    store.append(_record("full", {"speedup": 1.0}))  # an older record without the setting: eager
    df = load_results(store.path)
    assert df["timing"].tolist() == ["eager", "eager", "CUDA graphs", "CUDA graphs", "eager"]
    marked = mark_fronts(df, "speedup", "agreement_delta")
    # Each regime has its own front: the faster graph runs do not push the eager ones off theirs.
    assert marked.loc[marked["mode"] == "early-exit", "on_front"].all()
    axes = FIGURES["speed_accuracy_speedup"](df).axes
    titles = sorted(ax.get_title() for ax in axes if ax.get_title())
    assert titles == ["m (cpu)", "m (cpu) · CUDA graphs"]


def test_layerskip_default_exit_layer_is_the_deepest_head_and_repeats_keep_the_newest(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    per_head = {1: {"agreement": 0.4}, 5: {"agreement": 0.7}}
    first = make_record({"mode.name": "layerskip"}, {"speedup": 1.0}, {}, per_head=per_head)
    again = make_record({"mode.name": "layerskip"}, {"speedup": 2.0}, {}, per_head=per_head)
    store.append(first)
    store.append(again)
    df = load_results(store.path)
    assert df["exit_layer"].tolist() == [5.0, 5.0]
    assert latest_per_config(df)["speedup"].tolist() == [2.0]
    assert accuracy_axis(df)[0] == "acc_delta"  # only lossless runs: their delta is 0, no proxy needed


def test_missing_empty_or_all_failed_store_raises_naming_the_path(tmp_path):
    with pytest.raises(EmptyResultsError, match=re.escape(str(tmp_path / "none.jsonl"))):
        load_results(tmp_path / "none.jsonl")
    store = ResultStore(tmp_path / "failed.jsonl")
    store.append(_record("full", {}, status="failed"))
    with pytest.raises(EmptyResultsError, match="failed.jsonl: all 1 record"):
        load_results(store.path)


def test_wandb_runs_become_records_like_the_local_ones(monkeypatch):
    run = types.SimpleNamespace(
        id="abc",
        state="finished",
        created_at="2026-01-01T00:00:00Z",
        config={"mode.name": "dssd", "model": {"name": "pythia-70m"}},
        summary={"speedup": 1.2, "status": "ok", "run_id": "r1", "_runtime": 3, "exit_histogram": {"x": 1}},
    )
    calls = []

    class Api:
        def runs(self, path, filters=None):
            calls.append(path)
            return [run]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    raw = load_wandb("me/proj")
    assert calls == ["me/proj"]
    row = raw.iloc[0]
    assert row["run_id"] == "r1" and row["status"] == "ok" and row["source"] == "wandb:me/proj"
    assert row["config.model.name"] == "pythia-70m" and row["metric.speedup"] == 1.2
    assert "metric._runtime" not in raw and "metric.exit_histogram" not in raw


def test_lossless_modes_mirror_the_decoding_package():
    from earlyexit.decoding import LOSSLESS

    assert tuple(LOSSLESS_MODES) == tuple(LOSSLESS)


# ---------------------------------------------------------------- published numbers


def _in_design(row: pd.Series, design: str) -> bool:
    """The value as DESIGN.md's table writes it: a percentage for an acceptance rate, else a number."""
    value = row["value"]
    if row["metric"] == "acceptance":
        return any(f"{100 * value:{fmt}}%" in design for fmt in (".1f", ".0f"))
    return any(f"{value:{fmt}}" in design for fmt in (".2f", ".1f", "g"))


def test_published_numbers_are_present_cited_and_taken_from_the_design_notes():
    pub = load_published()
    assert list(pub.columns) == [
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
    ]
    values = {(a, m, v) for a, m, v in zip(pub["arxiv_id"], pub["metric"], pub["value"], strict=True)}
    required = {("2407.21082", "acceptance_ratio_vs_layerskip", 1.66)}
    required |= {("2309.08168", "speedup", v) for v in (1.73, 1.99)}
    required |= {("2404.16710", "speedup", v) for v in (2.16, 1.82, 2.0, 1.34, 1.30, 1.75, 1.83, 1.80, 2.06)}
    required |= {("2404.16710", "acceptance", v) for v in (0.689, 0.778, 0.45, 0.989)}
    required |= {("2207.07061", "layers_per_token", 1.73), ("2207.07061", "speedup_estimated", 3.53)}
    required |= {("2504.05598", "speedup", 2.62), ("2410.06916", "speedup", 1.6)}
    assert required <= values
    # Every row says where it was read; nothing says "not recorded" now that the sources are known.
    assert not pub.astype(str).apply(lambda c: c.str.contains("not recorded", case=False)).any().any()
    assert set(pub["source_kind"]) == {"primary", "abstract", "blog"}
    layerskip = pub[(pub["arxiv_id"] == "2404.16710") & (pub["source_kind"] == "primary")]
    assert set(layerskip["paper_version"]) == {"v4"}
    assert set(layerskip["table_or_figure"]) == {f"Table {i}" for i in range(3, 8)}
    assert set(layerskip["hardware"]) == {"H100", "A100", "CPU"}
    dssd = pub[pub["arxiv_id"] == "2407.21082"].iloc[0]
    assert (dssd["paper_version"], dssd["hardware"]) == ("v2 (Feb 2026)", "not stated in the abstract")
    if not DESIGN.exists():
        pytest.skip(f"{DESIGN} not present: cannot check the numbers' source")
    design = DESIGN.read_text()
    for _, row in pub.iterrows():
        assert row["arxiv_id"] in design
        assert _in_design(row, design), (row["metric"], row["value"])


def test_published_table_refuses_blank_cells_and_unknown_source_kinds(tmp_path):
    table = pd.read_csv(PUBLISHED_CSV, dtype=str, keep_default_na=False)
    table.loc[3, "hardware"] = ""
    table.to_csv(tmp_path / "blank.csv", index=False)
    with pytest.raises(ValueError, match=r"blank cells \(line, column\): \[\(5, 'hardware'\)\]"):
        load_published(tmp_path / "blank.csv")
    table.loc[3, "hardware"] = "H100"
    table.loc[0, "source_kind"] = "memory"
    table.to_csv(tmp_path / "kind.csv", index=False)
    with pytest.raises(ValueError, match="source_kind must be one of"):
        load_published(tmp_path / "kind.csv")


def test_model_matching_is_strict():
    assert model_match("Pythia 70M-2.8B", "pythia-410m") == "family only"
    assert model_match("llama2-7B", "meta/Llama-2-7b") == "yes"  # case and punctuation do not matter
    assert model_match("llama2-7B", "llama2-70b") == "no"
    assert model_match("LLaMA-2 family", "embedded") == "no"
    assert model_match("not stated in the abstract", "embedded") == "not stated"
    assert hardware_match("H100", ["NVIDIA H100 80GB HBM3"]) == "yes"
    assert hardware_match("TPUv3", ["NVIDIA H100 80GB HBM3", "cuda"]) == "no"
    assert hardware_match("not stated in the abstract", ["cpu"]) == "not stated"


# ---------------------------------------------------------------- exited tokens' KV strategy (synthetic)

KV_RUNS = [  # (engine.kv or None for a record from before the setting, speedup, FLOPs saved, agreement)
    ("fill", 1.2, 0.0, 0.90),
    ("fill", 1.5, 0.0, 0.80),
    (None, 1.4, 0.0, 0.95),
    ("propagate", 1.1, 0.20, 0.85),
    ("propagate", 1.3, 0.35, 0.70),
]
SHAPE = "GPTNeoXForCausalLM layers=6 hidden=32 heads=4 kv_heads=4 ffn=128 vocab=97"


def _kv_store(tmp_path: Path) -> Path:
    store = ResultStore(tmp_path / "kv.jsonl")
    for i, (kv, speedup, saved, agreement) in enumerate(KV_RUNS):
        metrics = {
            "speedup": speedup,
            "flops_saved": saved,
            "heldout_agreement_at_target": agreement,
            "layers_per_token": 6 * (1 - saved) - 0.1 * i,
            "model_shape": SHAPE,
        }
        flat = {"calibration.target": 0.6 + 0.05 * i, **({"engine.kv": kv} if kv else {})}
        store.append(_record("early-exit", metrics, **flat))
    store.append(_record("full", {"speedup": 1.0, "flops_saved": 0.0, "outputs_equal_full": True}))
    return store.path


def test_old_records_without_the_kv_column_are_read_as_fill(tmp_path):
    df = load_results(_kv_store(tmp_path))
    assert "config.engine.kv" in raw_records(tmp_path / "kv.jsonl")[0]
    assert "config.engine.kv" not in raw_records(tmp_path / "kv.jsonl")[2]
    assert df["kv"].tolist() == ["fill", "fill", "fill", "propagate", "propagate", "fill"]


def test_propagate_and_fill_runs_form_separate_fronts_named_by_strategy(tmp_path):
    df = load_results(_kv_store(tmp_path))
    marked = mark_fronts(df, "speedup", "agreement_delta")
    early = marked[marked["mode"] == "early-exit"]
    assert (
        early["group"].tolist()
        == ["early-exit · entropy · KV fill"] * 3 + ["early-exit · entropy · KV propagate"] * 2
    )
    # Fill: the old record (1.4, .95) is in the fill series and beats (1.2, .90); together with
    # fill, both propagate runs would be dominated, alone they are their own front.
    assert early["on_front"].tolist() == [False, True, True, True, True]
    assert not pareto_mask(early["speedup"], early["agreement_delta"])[3:].any()
    for x, want in (("speedup", {(1.1, -0.15), (1.3, -0.3)}), ("flops_saved", {(0.2, -0.15), (0.35, -0.3)})):
        (ax,) = FIGURES[f"speed_accuracy_{'flops' if x == 'flops_saved' else x}"](df).axes
        lines = {line.get_label(): line for line in ax.lines}
        propagate = lines["early-exit · entropy · KV propagate"]
        got = {(round(float(a), 9), round(float(b), 9)) for a, b in propagate.get_xydata()}
        assert got == want, x
        assert propagate.get_linestyle() == "-."
        assert lines["early-exit · entropy · KV fill"].get_linestyle() in ("-", "None")
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert {"early-exit · entropy · KV fill", "early-exit · entropy · KV propagate"} <= set(legend)


def test_runs_with_priced_heads_form_their_own_series_and_old_records_read_all_heads(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.append(_record("dssd", {"speedup": 0.9, "outputs_equal_full": True}))  # before the key
    store.append(
        _record("dssd", {"speedup": 0.95, "outputs_equal_full": True}, **{"calibration.heads": "all"})
    )
    priced = {"calibration.heads": "priced", "calibration.target": 0.95}
    store.append(
        _record("dssd", {"speedup": 1.0, "outputs_equal_full": True, "heads_kept": "[1, 5]"}, **priced)
    )
    store.append(_record("full", {"speedup": 1.0, "outputs_equal_full": True}, **priced))
    df = load_results(store.path)
    assert df["head_choice"].tolist() == ["all", "all", "priced", "priced"]
    groups = mark_fronts(df, "speedup", "agreement_delta")["group"].tolist()
    assert groups == ["DSSD · entropy", "DSSD · entropy", "DSSD · entropy · priced heads", "full"]
    assert [run_name(row) for _, row in df.iterrows()][2:] == ["DSSD · entropy · priced heads t=0.95", "full"]
    text = write_summary(df, tmp_path, "r.jsonl").read_text()
    measured = [
        line for line in text.split("## Measured")[1].split("\n## ")[0].splitlines() if line.startswith("| ")
    ]
    header = [c.strip() for c in measured[0].strip("|").split("|")]
    heads = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))["heads"]
        for line in measured[1:]
    ]
    assert sorted(heads) == ["all", "all", "priced: 1 5", "—"]  # full: no heads


def test_summary_shows_the_kv_strategy_and_puts_propagate_beside_calm(tmp_path):
    df = load_results(_kv_store(tmp_path))
    text = write_summary(df, tmp_path, "kv.jsonl").read_text()
    measured = text.split("## Measured")[1].split("\n## ")[0]
    lines = [line for line in measured.splitlines() if line.startswith("| m |")]
    assert [line.split(" | ")[1:3] for line in lines] == [
        ["full", "fill"],
        *[["early-exit", "fill"]] * 3,
        *[["early-exit", "propagate"]] * 2,
    ]
    kv = text.split("## Exited tokens' KV: fill, propagate, skip")[1].split("\n## ")[0]
    assert "1.73 of 8 decoder layers per token (22% of depth)" in kv and "*estimated* ×3.53" in kv
    assert "differ in model, task and hardware" in kv
    # The propagate run with fewest layers (4th run: 6 * 0.65 - 0.4 = 3.5 of 6) beside CALM's 1.73.
    assert "| m | propagate | — | entropy | 0.8 | 3.50 | 58% | +35.0% | — | -0.300 | 1.30× |" in kv
    # What each strategy saves is read from the records, never asserted in prose.
    assert "`fill` +0.0% (3 run(s)); `propagate` +20.0% to +35.0% (2 run(s))." in kv
    assert "no FLOPs" not in text
    published = text.split("## Published vs measured")[1]
    assert CAVEATS in published
    calm = [line for line in published.splitlines() if "(arXiv 2207.07061" in line]
    assert len(calm) == 2
    head = "| layers_per_token | 1.73 | m | 3.5 | fewest layers/token, early-exit · entropy · KV propagate"
    assert head + " t=0.8:" in calm[0]
    assert "3.50 layers/token (58% of 6 layers), FLOPs saved +35.0%, agreement Δ -0.300" in calm[0]
    assert "| speedup_estimated | 3.53 | m | 1.3 | best measured early-exit KV propagate (t=0.8)" in calm[1]
    assert all("model no, task no, hardware no" in line for line in calm)


def test_acceptance_ratio_is_given_under_both_definitions_beside_the_published_one(tmp_path):
    store = ResultStore(tmp_path / "acc.jsonl")
    for mode, rate, demo in (("dssd", 0.6, 0.8), ("dssd", 0.5, 0.9), ("layerskip", 0.5, 0.5)):
        store.append(_record(mode, {"acceptance_rate": rate, "acceptance_rate_demo": demo}))
    df = load_results(store.path)
    table = compare(df, load_published())
    dssd = table[table["arxiv_id"] == "2407.21082"]
    assert dssd["published"].tolist() == [1.66, 1.66]
    assert dssd["measured"].tolist() == pytest.approx([0.6 / 0.5, 0.9 / 0.5])
    assert dssd["measured_what"].tolist() == [
        "best DSSD / best LayerSkip acceptance, head drafts only",
        "best DSSD / best LayerSkip acceptance, full-model tokens counted as accepted drafts, "
        "as the public DSSD demo counts",
    ]
    # Records from before the demo count: the head-drafts ratio stands, the other says why not.
    old = df.assign(acceptance_rate_demo=np.nan)
    what = compare(old, load_published()).query("arxiv_id == '2407.21082'")["measured_what"].tolist()
    assert what[0] == "best DSSD / best LayerSkip acceptance, head drafts only"
    assert what[1].startswith(
        "needs DSSD and LayerSkip runs on the same model and heads (DSSD with more than one head kept) "
        "that record this acceptance (full-model tokens"
    )
    (ax,) = FIGURES["acceptance"](df).axes
    assert "= 1.20× (head drafts only)\n1.80× (full-model tokens as drafts)" in ax.get_title()


# ---------------------------------------------------------------- real runs on the embedded model


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Eight real runs (full, early-exit x 2 metrics x 2 targets, DSSD, LayerSkip x 2 exit layers)."""
    tmp = tmp_path_factory.mktemp("analysis_runs")
    paths = [f"results.path={tmp / 'records.jsonl'}", f"cache_dir={tmp / 'cache'}"]
    for overrides in RUNS:  # the first run tokenises the corpus; the others read its cached streams
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*overrides, *TINY_RUN, *paths])
        runner.record_run(cfg)
    return tmp / "records.jsonl"


@pytest.fixture(scope="module")
def runs(store) -> pd.DataFrame:
    return latest_per_config(load_results(store))


def test_real_runs_load_with_short_columns(runs):
    assert len(runs) == len(RUNS)
    assert sorted(runs["mode"].value_counts().items()) == [
        ("dssd", 1),
        ("early-exit", 4),
        ("full", 1),
        ("layerskip", 2),
    ]
    assert np.isfinite(runs["speedup"]).all() and (runs["speedup"] > 0).all()
    assert np.isfinite(runs["flops_saved"]).all()
    lossless = runs[runs["lossless"]]
    assert (lossless["agreement_delta"] == 0).all() and (lossless["acc_delta"] == 0).all()
    lossy = runs[~runs["lossless"]]
    assert lossy["acc_delta"].isna().all() and (lossy["agreement_delta"] < 0).all()  # task=none: proxy
    assert accuracy_axis(runs)[0] == "agreement_delta"
    assert sorted(runs.loc[runs["mode"] == "layerskip", "exit_layer"]) == [2.0, 4.0]
    assert runs.loc[runs["mode"].isin(["dssd", "layerskip"]), "acceptance_rate"].between(0, 1).all()
    heads = per_head_table(runs)
    assert {"auroc_entropy", "auroc_margin", "auroc_max-prob", "heldout_agreement_at_target"} <= set(heads)


def test_real_runs_carry_a_speedup_interval_and_a_priced_breakdown_that_reprojects(runs, store):
    lossy = runs[runs["mode"] != "full"]
    assert (lossy["speedup_ci_low"] <= lossy["speedup_ci_high"]).all()
    assert lossy["within_noise"].isin([True, False]).all()
    assert (lossy["timing_samples"] == 2).all()  # 2 prompts x 1 repeat (TINY_RUN)
    parts = runs[[f"time_ms.{c}" for c in COST_CATEGORIES]].sum(axis=1)
    np.testing.assert_allclose(parts, runs["predicted_tpot_ms"], rtol=1e-9)
    assert (runs["predicted_tpot_ms"] > 0).all() and np.isfinite(runs["prediction_error"]).all()
    # Each run's profile was timed between its own samples and is stored in its record; re-priced
    # with it, the projection reproduces the stored predictions, the mode's and its baseline's.
    assert (runs["profile_source"] == "interleaved").all()
    assert not (store.parent / "cache" / "profile").exists()
    for _, run in runs.iterrows():
        profile = CostProfile.from_json(json.loads(run["profile"]))
        assert profile.key == run["profile_key"]
        (projected,) = project(runs[runs["run_id"] == run["run_id"]], profile).table.to_dict("records")
        assert projected["projected_tpot_ms"] == pytest.approx(run["predicted_tpot_ms"], rel=1e-9)
        assert projected["projected_full_tpot_ms"] == pytest.approx(run["full_predicted_tpot_ms"], rel=1e-9)


def test_fronts_on_real_runs_are_exactly_the_undominated_runs(runs):
    y = "agreement_delta"
    # Busy-machine runs are kept off fronts (tested apart); this checks the dominance rule itself.
    marked = mark_fronts(runs, "speedup", y, by=["model"], include_busy=True)
    pts = marked[["speedup", y]].to_numpy()
    for i, (sx, sy) in enumerate(pts):
        others = np.delete(pts, i, axis=0)
        dominated = (
            (others[:, 0] >= sx) & (others[:, 1] >= sy) & ((others[:, 0] > sx) | (others[:, 1] > sy))
        ).any()
        assert marked["on_front"].iloc[i] == (not dominated)
    assert marked["on_front"].any()


def run_level(names) -> set[str]:
    """Figure names other than the per-workload ``speed_quality_<workload>`` ones."""
    return {n for n in names if not n.startswith("speed_quality_")}


def _check_figure_files(paths: list[Path]) -> None:
    png, pdf = paths
    assert png.suffix == ".png" and pdf.suffix == ".pdf"
    assert png.stat().st_size > 0 and pdf.stat().st_size > 0
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert pdf.read_bytes()[:4] == b"%PDF"


@pytest.fixture(scope="module")
def drawn(runs, tmp_path_factory) -> tuple[Path, dict[str, list[Path]], dict[str, str]]:
    out = tmp_path_factory.mktemp("figures")
    return out, *make_all(runs, out)


def test_every_figure_is_drawn_from_real_runs(drawn):
    _, written, skipped = drawn
    # Beside FIGURES, one speed-quality figure per generation workload the runs recorded, if any.
    assert not run_level(skipped)
    assert run_level(written) == set(FIGURES)
    for paths in written.values():
        _check_figure_files(paths)


def test_figures_plot_the_recorded_numbers(store, runs):
    records = raw_records(store)
    for name, x_key in (("speed_accuracy_speedup", "speedup"), ("speed_accuracy_flops", "flops_saved")):
        (ax,) = FIGURES[name](runs).axes
        want = {(round(r[f"metric.{x_key}"], 9), round(accuracy_proxy(r), 9)) for r in records}
        assert plotted_points(ax) == want, name
        assert ax.get_ylabel() == "agreement Δ vs full (held-out proxy)"
        assert ax.get_xlabel().startswith({"speedup": "speedup vs full", "flops_saved": "FLOPs saved"}[x_key])
        assert ax.get_title() == "embedded (cpu)"
    # Acceptance: one bar per DSSD/LayerSkip run, as long as its acceptance rate; the ratio in the title.
    (ax,) = FIGURES["acceptance"](runs).axes
    bars = sorted(round(p.get_width(), 9) for p in ax.patches)
    speculative = [r for r in records if r["config.mode.name"] in ("dssd", "layerskip")]
    assert bars == sorted(round(r["metric.acceptance_rate"], 9) for r in speculative)
    assert f"best DSSD / best LayerSkip = {independent_acceptance_ratio(records):.2f}×" in ax.get_title()
    # Exit histograms: the bars are each run's decoded exits per layer over its decode passes.
    heights = sorted(
        round(p.get_height(), 9)
        for ax in FIGURES["exit_histograms"](runs).axes
        for p in ax.patches
        if p.get_height() > 0
    )
    shares = []
    for r in records:
        if r["config.mode.name"] != "full":
            hist = json.loads(r["metric.exit_histogram"])
            shares += [round(n / sum(hist.values()), 9) for n in hist.values() if n > 0]
    assert heights == sorted(shares)


def test_summary_has_the_measured_table_and_the_published_comparison(store, runs, drawn):
    out, written, skipped = drawn
    text = write_summary(runs, out, "records.jsonl", written, skipped).read_text()
    measured = text.split("## Measured")[1].split("## Cost model: predicted vs measured")[0]
    rows = [line for line in measured.splitlines() if line.startswith("| embedded |")]
    assert len(rows) == len(RUNS)
    assert "| speedup [95% CI] | within noise | FLOPs saved | acc Δ |" in measured
    for _, run in runs[runs["mode"] != "full"].iterrows():
        interval = f"{run['speedup']:.2f}× [{run['speedup_ci_low']:.2f}–{run['speedup_ci_high']:.2f}]"
        assert f"| {interval} | {'≈ 1' if run['within_noise'] else 'no'} |" in measured
    cost = text.split("## Cost model: predicted vs measured")[1].split("## Published vs measured")[0]
    per_mode = [line.split(" | ")[2] for line in cost.splitlines() if line.startswith("| embedded | eager |")]
    assert per_mode[:4] == ["full", "early-exit", "dssd", "layerskip"]  # then one row per run
    assert len(per_mode) == 4 + len(RUNS)
    records = raw_records(store)
    check_measured_table(text, records)
    published = text.split("## Published vs measured")[1]
    assert "No published number below matches our runs in both model and task" in published
    ratio = independent_acceptance_ratio(records)
    assert (
        f"| 1.66 | embedded | {ratio:.3g} | best DSSD / best LayerSkip acceptance, head drafts only |"
        in published
    )
    demo = independent_acceptance_ratio(records, "metric.acceptance_rate_demo")
    assert (
        f"| 1.66 | embedded | {demo:.3g} | best DSSD / best LayerSkip acceptance, full-model tokens"
        in published
    )
    best_layerskip = max(r["metric.speedup"] for r in records if r["config.mode.name"] == "layerskip")
    assert f"| speedup | 2.16 | embedded | {best_layerskip:.3g} | best layerskip" in published
    assert CAVEATS in published
    assert "(arXiv 2309.08168" in published and "llama3.2-1B" in published
    assert "[png](acceptance.png)" in text


def test_partial_results_draw_what_they_can_and_say_why_the_rest_is_skipped(runs, tmp_path, caplog):
    only_full = runs[runs["mode"] == "full"]
    with caplog.at_level(logging.WARNING, logger="analysis.figures"):
        written, skipped = make_all(only_full, tmp_path)
    assert {"speed_accuracy_speedup", "speed_accuracy_flops", "separation_auroc"} <= set(written)
    # Nothing beside full: no speedup to predict either.
    assert run_level(skipped) == {
        "exit_histograms",
        "calibration",
        "acceptance",
        "speedup_predicted_vs_measured",
    }
    assert "skipped figure acceptance: no DSSD or LayerSkip run with an acceptance rate" in caplog.text
    assert "no run other than full has both a predicted and a measured speedup" in caplog.text
    text = write_summary(only_full, tmp_path, "x", written, skipped).read_text()
    assert "acceptance: skipped (no DSSD or LayerSkip run" in text
    assert "needs DSSD and LayerSkip runs" in text
    # No per-head data at all (e.g. records read back from W&B).
    bare = runs.assign(per_head=None, **{"metric.exit_histogram": None})
    written, skipped = make_all(bare, tmp_path / "bare")
    assert run_level(skipped) == {"exit_histograms", "separation_auroc", "calibration"}
    for paths in written.values():
        _check_figure_files(paths)


def test_notebooks_run_with_plain_python_and_draw_their_figures(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EARLYEXIT_RESULTS", str(store))
    monkeypatch.setenv("EARLYEXIT_FIGURES", str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the notebooks put the repo root on sys.path
    notebooks = sorted((ROOT / "analysis" / "notebooks").glob("*.py"))
    assert len(notebooks) == 6
    for notebook in notebooks:
        assert notebook.read_text().startswith("# %% [markdown]")
        runpy.run_path(str(notebook), run_name="__main__")
    assert {p.name for p in tmp_path.glob("*.png")} == {f"{name}.png" for name in FIGURES}
    ratio = independent_acceptance_ratio(raw_records(store))
    assert f"best DSSD / best LayerSkip = {ratio:.2f}x" in capsys.readouterr().out


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "analysis", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_cli_regenerates_every_figure_and_the_summary(store, tmp_path):
    out = tmp_path / "figs"
    proc = _cli("--results", str(store), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FIGURES:
        _check_figure_files([out / f"{name}.png", out / f"{name}.pdf"])
    text = (out / "summary.md").read_text()
    assert "## Published vs measured" in text
    check_measured_table(text, raw_records(store))


def test_cli_names_a_missing_or_empty_store(tmp_path):
    missing = tmp_path / "nowhere" / "records.jsonl"
    proc = _cli("--results", str(missing), "--out", str(tmp_path / "figs"), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: no results store at {missing}" in proc.stderr and "Traceback" not in proc.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    proc = _cli("--results", str(empty), "--out", str(tmp_path / "figs"), cwd=tmp_path)
    assert proc.returncode == 2 and f"{empty} holds no loadable records" in proc.stderr
    assert not (tmp_path / "figs").exists()
