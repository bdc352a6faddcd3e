"""The decoding benchmark script runs end to end and stores what BENCHMARKS.md reports.

A smoke test, not a timing: a random Pythia-70m shape, a handful of tokens, and graphs
through the CPU replay stand-in so the graph path of the script runs too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from earlyexit.measure.baselines import BASELINES
from earlyexit.measure.profile import DEPTH_RUN

ROOT = Path(__file__).resolve().parents[1]


def engine_modes_of(record: dict) -> set[str]:
    return {name for name in record["modes"] if " (graphs)" not in name and name not in BASELINES}


def test_benchmark_script_stores_eager_and_graph_timings(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark_decoding.py"),
        "--random-weights", "pythia-70m",
        "--device", "cpu",
        "--prompts", "2",
        "--prompt-len", "8",
        "--max-new-tokens", "4",
        "--repeats", "2",
        "--profile-repeats", "2",
        "--profile-rows", "3",
        "--graphs", "replay",
        "--baselines", "hf_generate,prompt_lookup,assisted",
        "--draft-model", "pythia-70m",  # random weights: times the method, not its acceptance
        "--batch-sizes", "1,2",
        "--out", str(tmp_path),
        "--profiles-out", str(tmp_path / "profiles"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    record = json.loads((tmp_path / "cpu-pythia-70m-float32.json").read_text())
    for size in ("1", "2"):  # every mode and transformers' batched generate against full at that B
        batch = record["batches"][size]
        assert set(batch) == {*engine_modes_of(record), "hf_generate"}
        assert all(
            m["outputs_equal_full"] for name, m in batch.items() if name in ("full", "layerskip", "del")
        )
        assert batch["full"]["throughput_speedup"] == pytest.approx(1.0)
        assert batch["layerskip"]["predicted_speedup"] > 0
    modes = record["modes"]
    baselines = {"hf_generate", "prompt_lookup", "assisted"}
    engine_modes = {"full", "layerskip", "del"}
    assert set(modes) == {*engine_modes, *baselines, *(f"{m} (graphs)" for m in engine_modes)}
    for name, mode in modes.items():  # every mode against `full` of its own regime, with an interval
        assert mode["speedup_ci_low"] <= mode["speedup"] <= mode["speedup_ci_high"], name
        assert mode["timing_samples"] == 4  # 2 prompts x 2 repeats
    assert modes["full"]["speedup"] == 1.0 and modes["full"]["within_noise"]
    assert "ratio_ci_low" in modes["full"]["vs_hf_generate"]
    assert modes["full (graphs)"]["graphs_captured"] > 0 and modes["full"]["graphs_captured"] == 0
    for name in ("full", "layerskip", "del", "full (graphs)", "layerskip (graphs)"):  # priced
        assert modes[name]["predicted_ms"]["tpot_ms"] > 0
    for name in ("hf_generate", "prompt_lookup"):  # their passes priced as full's are
        assert modes[name]["predicted_ms"]["tpot_ms"] > 0
    assert "predicted_ms" not in modes["assisted"]  # no profile of the draft model here
    assert all(record["outputs_equal_full"].values()) and len(record["outputs_equal_full"]) == 7
    assert record["baselines"]["assisted"]["draft_fingerprint"] == "random:pythia-70m"
    assert record["baselines"]["prompt_lookup"]["prompt_lookup_num_tokens"] == 10
    assert record["graphs"] == "replay"
    profiles = {regime: json.loads(Path(path).read_text()) for regime, path in record["profiles"].items()}
    assert set(profiles) == {"eager", "graphs"}
    assert [p["identity"]["graphs"] for p in profiles.values()] == [False, True]
    assert profiles["eager"]["identity"]["head_architecture"] == "shared"
    assert profiles["eager"]["rows"] == [1, 2, 3]
    assert record["environment"]["device"] == "cpu"
    assert record["hf_early_exit"]["status"] == "unsupported"
    assert "IndexError" in record["hf_early_exit"]["reason"]
    # The summary script renders it for BENCHMARKS.md, each mode against full of its own regime.
    path = tmp_path / "cpu-pythia-70m-float32.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "summarise_benchmark.py"), str(path)]
    text = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    for name, mode in modes.items():
        assert f"| {name} | {mode['tpot_ms']:.3f} | " in rows[name]
    graphed = modes["layerskip (graphs)"]
    interval = f"{graphed['speedup_ci_low']:.3f}–{graphed['speedup_ci_high']:.3f}"
    assert f"{graphed['speedup']:.3f}× [{interval}]" in rows["layerskip (graphs)"]
    ratio = modes["full (graphs)"]["predicted_ms"]["tpot_ms"] / graphed["predicted_ms"]["tpot_ms"]
    assert f"layerskip (graphs) {ratio:.3f}× / " in text
    hf = modes["full"]["vs_hf_generate"]
    assert f"`full` vs HF `generate`: **{hf['ratio']:.3f}×" in text
    assert f"| **total** | {modes['full']['predicted_ms']['tpot_ms']:.2f} |" in text


def test_benchmark_script_refuses_cuda_graphs_without_a_gpu(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark_decoding.py"),
        "--device",
        "cpu",
        "--graphs",
        "cuda",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "CUDA graphs need a CUDA device, got 'cpu'" in out.stderr


def test_benchmark_script_refuses_an_unknown_baseline_before_loading():
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark_decoding.py"),
        "--baselines",
        "hf_generate,medusa",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        "unknown baseline(s) 'medusa'; valid: hf_generate, assisted, prompt_lookup, hf_early_exit"
        in out.stderr
    )


def test_benchmark_script_refuses_an_unknown_kv_strategy_before_loading():
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_decoding.py"), "--kv", "fill,copy"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--kv copy: not a KV strategy; valid: fill, propagate, skip" in out.stderr


def test_price_passes_times_and_prices_every_pass_shape_of_each_mode(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "price_passes.py"),
        "--prompts", "2",
        "--max-new-tokens", "6",
        "--repeats", "1",
        "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    (path,) = tmp_path.glob("passes-cpu-*.json")
    rows = json.loads(path.read_text())["passes"]
    modes = {r["mode"] for r in rows}
    assert {"full", "early-exit always, kv=fill", "early-exit always, kv=skip"} <= modes
    assert sum(m.startswith("layerskip E=") for m in modes) == 2
    # full: every decode pass runs all 8 layers after a pass that did (2 prompts x 5 passes).
    (full,) = [r for r in rows if r["mode"] == "full"]
    assert (full["depth"], full["previous_depth"], full["previous_run"], full["rows"], full["passes"]) == (
        8, 8, 0, 1, 10
    )  # fmt: skip
    # early-exit with thresholds every score passes: every pass stops at the first head (layer 1),
    # the first after the prefill (8 layers), the k-th after k - 1 passes of 2 in a row.
    always = [r for r in rows if r["mode"] == "early-exit always, kv=skip"]
    shapes = {(r["depth"], r["previous_depth"], r["previous_run"]): r["passes"] for r in always}
    assert shapes == {(2, 8, 0): 2, **{(2, 2, k): 2 for k in range(1, 5)}}
    # The profile prices a warm pass by its depth and by the shallow passes before it.
    ratio = json.loads(path.read_text())["profile"]["depth_ratio"]
    assert len(ratio) == 8 and {len(by_run) for by_run in ratio} == {DEPTH_RUN}
    assert all(r["measured_ms"] > 0 and r["priced_ms"] > 0 and r["priced_flat_ms"] > 0 for r in rows)
    assert "no depth ratio" in done.stdout


def test_summarise_benchmark_names_a_file_that_is_not_a_benchmark_json(tmp_path):
    script = str(ROOT / "scripts" / "summarise_benchmark.py")
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"identity": {}, "rows": [1]}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for path, message in (
        (profile, f"{profile} is not a benchmark JSON of scripts/benchmark_decoding.py"),
        (broken, f"{broken} is not JSON"),
        (tmp_path / "absent.json", f"cannot read {tmp_path / 'absent.json'}"),
    ):
        out = subprocess.run([sys.executable, script, str(path)], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert message in out.stderr


def test_summarise_benchmark_shows_a_cost_category_it_has_no_label_for(tmp_path):
    mode = {
        "tpot_ms": 2.0,
        "tpot_ms_mean": 2.0,
        "predicted_ms": {"tpot_ms": 1.5, "layers_full": 1.0, "new_part": 0.5},
    }
    record = {
        "model": "m",
        "environment": {"device": "cpu", "device_name": "", "dtype": "float32"},
        "modes": {"full": mode},
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(record))
    cmd = [sys.executable, str(ROOT / "scripts" / "summarise_benchmark.py"), str(path)]
    text = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    assert "| layers of tokens at full depth | 1.00 |" in text and "| new_part | 0.50 |" in text
