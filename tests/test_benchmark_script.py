"""The decoding benchmark script runs end to end and stores what BENCHMARKS.md reports.

A smoke test, not a timing: a random Pythia-70m shape, a handful of tokens, and graphs
through the CPU replay stand-in so the graph path of the script runs too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script_stores_eager_and_graph_timings(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark_decoding.py"),
        "--random-weights", "pythia-70m",
        "--device", "cpu",
        "--prompts", "2",
        "--prompt-len", "8",
        "--max-new-tokens", "4",
        "--repeats", "1",
        "--rounds", "1",
        "--component-repeats", "2",
        "--graphs", "replay",
        "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    record = json.loads((tmp_path / "cpu-pythia-70m-float32.json").read_text())
    modes = record["modes"]
    assert set(modes) == {"full", "layerskip", "hf-generate", "full (graphs)", "layerskip (graphs)"}
    assert modes["full"]["speedup_vs_full"] == 1.0
    assert modes["full (graphs)"]["graphs_captured"] > 0 and modes["full"]["graphs_captured"] == 0
    assert all(record["outputs_equal_full"].values()) and len(record["outputs_equal_full"]) == 4
    assert record["graphs"] == "replay"
    assert set(record["components_ms"]) == set(record["components_ms_graphs"])
    assert all(v > 0 for v in record["components_ms_graphs"].values())
    assert record["environment"]["device"] == "cpu"
    assert record["hf_layerskip"]["status"] == "unsupported"


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
