"""analysis/: baselines timed beside full and the mode (transformers' generate, assisted and prompt
lookup decoding, transformers' LayerSkip) and the DEL mode, on synthetic records written with the
runner's own record format (no model runs here)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.text import Annotation

from analysis.figures import make_all
from analysis.load import LOSSLESS_MODES, load_results
from analysis.measures import MODE_ORDER
from analysis.published import compare, load_published
from analysis.summary import measured_table, write_summary
from analysis.workload_figures import fig_speed_quality
from analysis.workload_summary import published_generation_rows
from analysis.workloads import (
    baseline_frame,
    baseline_label,
    baseline_overall_frame,
    reference_baselines,
    speed_quality_points,
    workload_frame,
)
from earlyexit.harness.results import ResultStore
from tests.test_analysis_workloads import (
    NAN,
    _offsets,
    cnn,
    lossless,
    run_record,
    section,
    stdlib,
    table_rows,
    workload_metrics,
)

DRAFT = "embedded-draft"
ASSISTED = f"assisted (draft: {DRAFT})"
DEL_NAME, LS_NAME = "DEL K≤8", "LayerSkip E=2 K=4"
STDLIB_COL = "stdlib_completion (Python code, 40 prompts)"
CNN_COL = "cnn_dm_layerskip (English news, 20 prompts)"


def baseline_metrics(
    workload: str,
    name: str,
    speedup: float,
    ci: tuple[float, float],
    quality: dict[str, tuple[float, float, float]],
    equal: bool = True,
    mat: float = NAN,
    acceptance: float = NAN,
    flops: float = 1.0,
    divergence: tuple[int, int, int, float] | None = None,
) -> dict:
    """One baseline's fields on one workload, as the runner writes them (without ``metric.``):
    the mode's per-workload fields under ``workload.<W>.baseline.<B>.``, plus its FLOPs ratio and,
    where ``divergence`` = (prompts differing, first prompt, position, margin), where it parts."""
    mode_like = workload_metrics(workload, speedup, ci, mat, quality, (acceptance, NAN), equal)
    prefix = f"workload.{workload}."
    out = {
        f"{prefix}baseline.{name}.{key.removeprefix(prefix)}": value
        for key, value in mode_like.items()
        if key.removeprefix(prefix) not in ("prompts", "domain", "source", "note")
    }
    out[f"{prefix}baseline.{name}.flops_ratio"] = flops
    out[f"{prefix}baseline.{name}.prompts_differing"] = 0 if divergence is None else divergence[0]
    if divergence is not None:
        _, prompt, position, margin = divergence
        out[f"{prefix}baseline.{name}.first_divergence_prompt"] = prompt
        out[f"{prefix}baseline.{name}.first_divergence_position"] = position
        out[f"{prefix}baseline.{name}.divergence_margin"] = margin
    return out


def lineup(assisted_stdlib: float, hf_early_exit: bool = False) -> dict:
    """The baselines' metrics of one run: hf_generate, assisted (``assisted_stdlib`` on
    stdlib_completion, differing from full there), prompt lookup, and transformers' LayerSkip when
    asked; assisted records a quality metric (bleu) on cnn_dm that the mode does not."""
    names = ["hf_generate", "assisted", "prompt_lookup"] + (["hf_early_exit"] if hf_early_exit else [])
    out: dict = {"baselines": names}
    out["baseline.hf_generate.settings"] = {}
    out["baseline.assisted.settings"] = {
        "draft_model": DRAFT,
        "draft_fingerprint": "weights:0123456789abcdef0123",
        "num_assistant_tokens": 20,
    }
    out["baseline.prompt_lookup.settings"] = {"prompt_lookup_num_tokens": 10, "max_matching_ngram_size": 2}
    s, c = lossless("stdlib_completion"), lossless("cnn_dm_layerskip")
    ci = (assisted_stdlib - 0.2, assisted_stdlib + 0.2)
    out |= baseline_metrics("stdlib_completion", "hf_generate", 0.90, (0.85, 0.95), s, mat=1.0)
    out |= baseline_metrics("cnn_dm_layerskip", "hf_generate", 0.92, (0.88, 0.96), c, mat=1.0)
    q = {"exact_match": (0.39, -0.03, 0.01), "edit_similarity": (0.69, -0.02, 0.0)}
    div = (2, 3, 17, 0.015625)
    out |= baseline_metrics(
        "stdlib_completion", "assisted", assisted_stdlib, ci, q, False, 3.2, 0.8, 1.3, div
    )
    out |= baseline_metrics("cnn_dm_layerskip", "assisted", 1.05, (0.95, 1.15), c, mat=2.0, acceptance=0.6)
    out["workload.cnn_dm_layerskip.baseline.assisted.quality.bleu"] = 0.2
    out |= baseline_metrics("stdlib_completion", "prompt_lookup", 1.40, (1.30, 1.50), s, mat=1.6, flops=1.1)
    out |= baseline_metrics("cnn_dm_layerskip", "prompt_lookup", 1.00, (0.90, 1.10), c, mat=1.2)
    if hf_early_exit:
        out["baseline.hf_early_exit.settings"] = {"assistant_early_exit": 2}
        out |= baseline_metrics("stdlib_completion", "hf_early_exit", 1.10, (1.0, 1.2), s, mat=1.9)
        out |= baseline_metrics("cnn_dm_layerskip", "hf_early_exit", 1.02, (0.9, 1.1), c, mat=1.7)
    for name in names:
        out[f"workload.overall.baseline.{name}.speedup"] = assisted_stdlib if name == "assisted" else 1.0
        out[f"workload.overall.baseline.{name}.speedup_ci_low"] = 0.9
        out[f"workload.overall.baseline.{name}.speedup_ci_high"] = 2.0
        out[f"workload.overall.baseline.{name}.outputs_equal_full"] = name != "assisted"
    return out


def dated(record: dict, day: int) -> dict:
    """The record as written on 2026-01-<day>: which run is newest must not hang on clock ticks."""
    return {**record, "created_at": f"2026-01-{day:02d}T12:00:00+00:00"}


def write_store(path: Path) -> Path:
    """full, DEL, LayerSkip (all with baselines, oldest to newest), a newer early-exit run on a busy
    machine with baselines too, and an early-exit run without any (as records before them)."""
    store = ResultStore(path)
    full = [
        stdlib(1.0, (NAN, NAN), 0.40, mat=1.0, equal=True),
        cnn(1.0, (NAN, NAN), 0.100, mat=1.0, equal=True),
    ]
    store.append(dated(run_record("full", full, **lineup(1.70)), 1))
    del_stdlib = workload_metrics(
        "stdlib_completion", 1.35, (1.25, 1.45), 2.4, lossless("stdlib_completion"), (0.7, 0.7), True
    )
    del_cnn = workload_metrics("cnn_dm_layerskip", 1.15, (1.05, 1.25), 2.0, lossless("cnn_dm_layerskip"))
    del_cnn["workload.cnn_dm_layerskip.outputs_equal_full"] = True
    del_stdlib["workload.stdlib_completion.flops_ratio"] = 0.62
    store.append(dated(run_record("del", [del_stdlib, del_cnn], {"mode.max_draft": 8}, **lineup(1.75)), 2))
    ls = [
        workload_metrics(
            "stdlib_completion", 1.30, (1.2, 1.4), 2.1, lossless("stdlib_completion"), equal=True
        ),
        workload_metrics("cnn_dm_layerskip", 1.10, (1.0, 1.2), 1.8, lossless("cnn_dm_layerskip"), equal=True),
    ]
    config = {"mode.exit_layer": 2, "mode.draft_length": 4}
    store.append(dated(run_record("layerskip", ls, config, **lineup(1.80, hf_early_exit=True)), 3))
    busy = [stdlib(1.6, (1.5, 1.7), 0.30, delta_ci=(-0.15, -0.05)), cnn(1.5, (1.4, 1.6), 0.09)]
    extra = {**lineup(3.00, hf_early_exit=True), "machine_busy": True, "machine_busy_reason": "load 6"}
    store.append(dated(run_record("early-exit", busy, {"calibration.target": 0.6}, **extra), 4))
    plain = [stdlib(1.2, (1.1, 1.3), 0.38, delta_ci=(-0.04, 0.0)), cnn(1.05, (1.0, 1.1), 0.095)]
    store.append(dated(run_record("early-exit", plain, {"calibration.target": 0.9}), 5))
    return path


@pytest.fixture
def df(tmp_path) -> pd.DataFrame:
    return load_results(write_store(tmp_path / "records.jsonl"))


@pytest.fixture
def summary(df, tmp_path) -> str:
    written, skipped = make_all(df, tmp_path / "figs")
    return write_summary(df, tmp_path / "figs", "records.jsonl", written, skipped).read_text()


# ---------------------------------------------------------------- the baseline frame and its references


def test_baseline_records_parse_into_one_row_per_run_workload_and_baseline(df):
    bf = baseline_frame(df)
    # full, DEL: 3 baselines; LayerSkip and the busy run: 4; the plain early-exit run none; x 2 workloads
    assert len(bf) == 2 * (3 + 3 + 4 + 4)
    ls = bf[(bf["run_mode"] == "layerskip") & (bf["workload"] == "stdlib_completion")]
    assisted = ls[ls["baseline"] == "assisted"].iloc[0]
    assert assisted["label"] == ASSISTED and assisted["settings"]["num_assistant_tokens"] == 20
    assert (assisted["speedup"], assisted["speedup_ci_low"], assisted["speedup_ci_high"]) == (1.8, 1.6, 2.0)
    assert assisted["mean_accepted_tokens"] == 3.2 and assisted["acceptance_rate"] == 0.8
    assert assisted["flops_ratio"] == 1.3 and not assisted["outputs_equal_full"]
    assert (assisted["prompts_differing"], assisted["first_divergence_prompt"]) == (2, 3)
    assert (assisted["first_divergence_position"], assisted["divergence_margin"]) == (17, 0.015625)
    assert assisted["quality.exact_match"] == 0.39 and assisted["quality_full.exact_match"] == 0.40
    assert assisted["run_name"] == LS_NAME and assisted["model"] == "m" and assisted["dtype"] == "float16"
    assert set(ls["label"]) == {
        "hf_generate (transformers)",
        ASSISTED,
        "prompt lookup",
        "transformers LayerSkip E=2",
    }
    hf = ls[ls["baseline"] == "hf_generate"].iloc[0]
    assert hf["outputs_equal_full"] and math.isnan(hf["first_divergence_prompt"])
    # A baseline's quality keys are never read as the mode's (and the other way round).
    cnn_assisted = bf[(bf["baseline"] == "assisted") & (bf["workload"] == "cnn_dm_layerskip")].iloc[0]
    assert cnn_assisted["metrics"] == ("rouge2", "bleu")
    wf = workload_frame(df)
    assert set(wf.loc[wf["workload"] == "cnn_dm_layerskip", "metrics"]) == {("rouge2",)}
    assert "quality.bleu" not in wf
    assert len(wf) == 5 * 2  # baselines add no row of their own to the runs' frame
    del_row = wf[(wf["mode"] == "del") & (wf["workload"] == "stdlib_completion")].iloc[0]
    assert del_row["flops_ratio"] == 0.62 and del_row["name"] == DEL_NAME
    pooled = baseline_overall_frame(df)
    assert len(pooled) == 3 + 3 + 4 + 4
    assert set(pooled.loc[pooled["baseline"] == "assisted", "speedup"]) == {1.70, 1.75, 1.80, 3.00}


def test_the_reference_is_the_newest_run_off_a_busy_machine(df):
    refs = reference_baselines(baseline_frame(df))
    assert len(refs) == 4 * 2  # one per baseline and workload (one model, device, dtype, timing)
    assisted = refs[(refs["baseline"] == "assisted") & (refs["workload"] == "stdlib_completion")].iloc[0]
    # The busy run is newer and faster (3.0x): not the reference while steady runs measured it.
    assert assisted["speedup"] == 1.8 and assisted["run_name"] == LS_NAME and not assisted["busy"]
    assert (assisted["runs_measured"], assisted["busy_runs"], assisted["settings_vary"]) == (4, 1, False)
    early = refs[(refs["baseline"] == "hf_early_exit") & (refs["workload"] == "stdlib_completion")].iloc[0]
    assert early["run_name"] == LS_NAME and (early["runs_measured"], early["busy_runs"]) == (2, 1)


def test_reference_order_is_by_date_not_store_order_and_busy_only_when_nothing_else():
    rows = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "created_at": ["2026-01-03", "2026-01-01", "2026-01-05", "2026-01-02"],
            "model": "m",
            "device": "cuda",
            "device_name": None,
            "dtype": "float16",
            "timing": "eager",
            "workload": "w",
            "baseline": ["assisted", "assisted", "assisted", "prompt_lookup"],
            "busy": [False, False, True, True],
            "settings_text": ['{"draft_model": "x"}', '{"draft_model": "y"}', "{}", "{}"],
            "speedup": [1.1, 1.2, 1.3, 1.4],
        }
    )
    refs = reference_baselines(rows).set_index("baseline")
    assert refs.loc["assisted", "run_id"] == "a"  # newest steady, though written before b
    assert refs.loc["assisted", "settings_vary"] and refs.loc["assisted", "runs_measured"] == 3
    assert refs.loc["prompt_lookup", "run_id"] == "d" and refs.loc["prompt_lookup", "busy"]
    assert reference_baselines(rows.iloc[:0]).empty


def test_malformed_or_missing_baseline_fields_are_read_leniently(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    metrics = lineup(1.5)
    for key in [k for k in metrics if k.startswith("workload.cnn_dm_layerskip.baseline.prompt_lookup.")]:
        del metrics[key]  # prompt lookup recorded nothing on cnn_dm: no row there, not a row of NaNs
    metrics["baseline.assisted.settings"] = "{not json"
    work = [stdlib(1.0, (NAN, NAN), 0.40, equal=True), cnn(1.0, (NAN, NAN), 0.100, equal=True)]
    store.append(run_record("full", work, **metrics))
    store.append(run_record("full", work, baselines="not a list"))
    bf = baseline_frame(load_results(store.path))
    assert len(bf) == 2 * 3 - 1
    assert set(bf.loc[bf["baseline"] == "assisted", "label"]) == {"assisted (draft: ?)"}
    assert not ((bf["baseline"] == "prompt_lookup") & (bf["workload"] == "cnn_dm_layerskip")).any()


def test_baseline_labels_name_what_each_is():
    assert baseline_label("hf_generate") == "hf_generate (transformers)"
    assert baseline_label("assisted", {"draft_model": "EleutherAI/pythia-70m"}) == (
        "assisted (draft: EleutherAI/pythia-70m)"
    )
    assert baseline_label("assisted") == "assisted (draft: ?)"
    assert baseline_label("prompt_lookup", {"x": 1}) == "prompt lookup"
    assert baseline_label("hf_early_exit") == "transformers LayerSkip"
    assert baseline_label("something_new") == "something_new"


# ---------------------------------------------------------------- the tables


def test_speed_table_has_a_row_per_baseline_and_a_baseline_table_per_workload(summary):
    text = section(summary, "Generation workloads: speedup and mean accepted tokens")
    rows = {r["run"]: r for r in table_rows(text)}
    order = [r["run"] for r in table_rows(text)]
    runs = ["full", "early-exit · entropy t=0.6 (busy machine)", "early-exit · entropy t=0.9"]
    assert order[:5] == [*runs, LS_NAME, DEL_NAME]  # DEL after LayerSkip
    assert order[5:] == [
        "baseline: hf_generate (transformers)",
        f"baseline: {ASSISTED}",
        "baseline: prompt lookup",
        "baseline: transformers LayerSkip E=2",
    ]
    assisted = rows[f"baseline: {ASSISTED}"]
    # The LayerSkip run's measurement, not the newer busy run's.
    assert assisted[STDLIB_COL] == "1.80× [1.60–2.00] · 3.2 tok/pass"
    assert assisted[CNN_COL] == "1.05× [0.95–1.15] · 2.0 tok/pass"
    assert assisted["overall"] == "1.80× [0.90–2.00]"
    assert assisted["KV"] == "—" and assisted["head arch"] == "—" and assisted["device"] == "NVIDIA H200"
    assert rows[DEL_NAME][STDLIB_COL] == "1.35× [1.25–1.45] · 2.4 tok/pass"
    assert "Rows named `baseline: …` are what a user could run instead" in text
    assert (
        f"`stdlib_completion`: fastest alternative {ASSISTED} at 1.80× [1.60–2.00], 33% faster than our "
        f"best mode, {DEL_NAME} at 1.35× [1.25–1.45] (95% intervals apart)"
    ) in text
    assert (
        f"`cnn_dm_layerskip`: our best mode, {DEL_NAME} at 1.15× [1.05–1.25], is 10% faster than the "
        f"fastest alternative, {ASSISTED} at 1.05× [0.95–1.15] (95% intervals overlap: not told apart)"
    ) in text
    detail = table_rows(text.split("and the paired samples timed.")[1])
    del_detail = next(r for r in detail if r["run"] == DEL_NAME and r["workload"] == "stdlib_completion")
    assert del_detail["FLOPs ratio"] == "0.62×" and del_detail["outputs = full"] == "yes"
    baselines = table_rows(text.split("against that run's own full.")[1])
    one = next(r for r in baselines if r["baseline"] == ASSISTED and r["workload"] == "stdlib_completion")
    assert one["speedup [95% CI]"] == "1.80× [1.60–2.00]" and one["tok/pass"] == "3.2"
    assert one["acceptance"] == "0.800" and one["FLOPs ratio"] == "1.30×"
    assert one["outputs = full"] == (
        "no: 2 prompt(s) differ, first at prompt 3, token 17, full's logit margin there 0.0156"
    )
    assert one["settings"] == (
        f"draft_model={DRAFT}, draft_fingerprint=weights:01234567…, num_assistant_tokens=20"
    )
    assert one["measured by"] == f"{LS_NAME} (newest of 4 run(s), 1 busy)"
    assert one["quality (headline)"] == "exact_match: 0.390 (full 0.400) Δ -0.010 [-0.030, +0.010]"
    lookup = next(
        r for r in baselines if r["baseline"] == "prompt lookup" and r["workload"] == "stdlib_completion"
    )
    assert lookup["outputs = full"] == "yes" and lookup["decode speedup [95% CI]"] == "1.54× [1.43–1.65]"
    fronts = section(summary, "Generation workloads: speed–quality fronts")
    line = next(x for x in fronts.splitlines() if x.startswith("- `stdlib_completion`"))
    assert (
        f"baselines (references, on no front): hf_generate (transformers) (0.90×, 0.400), {ASSISTED}" in line
    )


# ---------------------------------------------------------------- the figure


def test_baselines_are_labelled_reference_points_off_the_front(df):
    fig = fig_speed_quality(df, "stdlib_completion")
    (ax,) = fig.axes
    # Outputs equal to full's sit on full's quality (0.40); assisted differs and keeps its own.
    assert _offsets(ax, "reference") == {(0.9, 0.4), (1.8, 0.39), (1.4, 0.4), (1.1, 0.4)}
    # prompt lookup (1.40, 0.40) would dominate DEL (1.35, 0.40) if references were on the front.
    assert _offsets(ax, "on_front") == {(1.35, 0.4)}
    assert _offsets(ax, "full") == {(1.0, 0.4)}
    points = speed_quality_points(workload_frame(df), "stdlib_completion", "exact_match")
    assert set(points.loc[points["on_front"], "name"]) == {DEL_NAME}
    labels = {t.get_text() for t in ax.texts if isinstance(t, Annotation)}
    assert labels == {
        DEL_NAME,
        "hf_generate (transformers)",
        ASSISTED,
        "prompt lookup",
        "transformers LayerSkip E=2",
    }
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {f"baseline: {ASSISTED}", "baseline: prompt lookup", "DEL", "LayerSkip"} <= legend
    bars = [c for c in ax.collections if c.get_gid() == "reference_ci"]
    ends = {(round(float(s[0][0]), 6), round(float(s[1][0]), 6)) for b in bars for s in b.get_segments()}
    assert ends == {(0.85, 0.95), (1.6, 2.0), (1.3, 1.5), (1.0, 1.2)}
    shapes = {
        tuple(map(tuple, c.get_paths()[0].vertices.round(3)))
        for c in ax.collections
        if c.get_gid() == "reference"
    }
    assert len(shapes) == 4  # a marker of its own per baseline


def test_records_without_baselines_draw_no_reference(df):
    plain = df[df["metric.baselines"].isna()]
    assert (
        len(plain) == 1 and baseline_frame(plain).empty and reference_baselines(baseline_frame(plain)).empty
    )
    (ax,) = fig_speed_quality(plain, "stdlib_completion").axes
    assert not _offsets(ax, "reference")
    assert not any(t.get_text().startswith("baseline:") for t in ax.get_legend().get_texts())


# ---------------------------------------------------------------- DEL


def test_del_sorts_after_layerskip_is_lossless_and_is_named_by_its_draft_cap(df):
    assert "del" in LOSSLESS_MODES and MODE_ORDER["del"] > MODE_ORDER["layerskip"]
    row = df[df["mode"] == "del"].iloc[0]
    assert row["lossless"] and row["max_draft"] == 8
    table = table_rows(measured_table(df))
    modes = [r["mode"] for r in table]
    assert modes.index("del") > modes.index("layerskip")
    del_row = next(r for r in table if r["mode"] == "del")
    assert (del_row["E"], del_row["K"]) == ("adaptive", "≤8")


def test_del_runs_are_read_beside_dels_published_rows(df, summary):
    header = ["published", "theirs", "task", "metric", "value", "workload", "ours_at", "speedup"]
    header += ["acceptance", "run", "match"]
    rows = pd.DataFrame(
        [dict(zip(header, r, strict=True)) for r in published_generation_rows(df, load_published())]
    )
    dels = rows[rows["published"].str.startswith("DEL")]
    assert sorted(dels["value"]) == ["2.16", "2.62"]
    assert set(dels["workload"]) == {"all workloads, pooled"}
    assert set(dels["run"]) == {f"best speedup: {DEL_NAME}"}
    assert set(dels["speedup"]) == {"1.25× [1.20–1.30] · 2.4 tok/pass"}  # the DEL run's pooled numbers
    ls = rows[(rows["task"] == "CNN/DM 1-shot") & (rows["metric"] == "speedup")]
    assert set(ls["run"]) == {f"best speedup: {LS_NAME}"}  # LayerSkip's rows still read LayerSkip
    measured = compare(df, load_published())
    del_measured = measured[measured["arxiv_id"] == "2504.05598"]
    assert set(del_measured["measured"]) == {1.35} and set(del_measured["measured_what"]) == {
        "best del (K≤8)"
    }
    assert "DEL: our best DEL run, pooled over all workloads" in section(
        summary, "Published generation results beside ours"
    )
