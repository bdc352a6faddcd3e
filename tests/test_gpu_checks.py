"""scripts/gpu_checks.sh: the one prepared call for a lent GPU.

Its steps need a GPU, so the tests swap python for a stub that writes what each step would
(a JSON under benchmarks/) and check the orchestration: every step runs in order, results
come back as one archive holding only this call's JSONs, and the budget skips what it cannot fit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_checks.sh"
STEPS = ["cuda-graph-test", "embedded", "pythia-160m", "pythia-410m", "pythia-1.4b", "price-passes"]
STUB = """#!/usr/bin/env bash
echo "stub $*"
case "$*" in
  -c*) exit 0 ;;
  *pytest*) sleep "${STUB_SLEEP:-0}"; exit 0 ;;
  *summarise_benchmark*) exit 0 ;;
  *random-weights*) name=$(echo "$*" | grep -o 'pythia-[0-9.]*[mb]') ;;
  *price_passes*) name=passes-cuda ;;
  *) name=embedded ;;
esac
echo '{}' > "benchmarks/results/$name.json"
echo '{}' > "benchmarks/profiles/$name-eager.json"
"""


def _repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the script in a repo of its own, python replaced by the stub."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / SCRIPT.name)
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "old.json").write_text("{}")  # committed earlier
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    return repo, {**os.environ, "PYTHON": str(stub)}


def _run(repo: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(repo / "scripts" / SCRIPT.name), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_step_runs_and_only_this_calls_results_come_back(tmp_path):
    repo, env = _repo(tmp_path)
    out = tmp_path / "out"
    done = _run(repo, out, env)
    assert done.returncode == 0, done.stderr
    log = (out / "gpu-checks.log").read_text()
    positions = [log.index(f"== {step}: exit 0") for step in STEPS]
    assert positions == sorted(positions)
    assert "--device cuda" in log and "--dtype float16" in log
    with tarfile.open(out / "gpu-results.tar.gz") as tar:
        names = sorted(tar.getnames())
    expected = sorted(
        f"benchmarks/{kind}/{name}{suffix}.json"
        for name in ("embedded", "pythia-160m", "pythia-410m", "pythia-1.4b", "passes-cuda")
        for kind, suffix in (("results", ""), ("profiles", "-eager"))
    )
    assert names == expected  # old.json, there before the call, stays out
    assert sorted(p.name for p in out.iterdir()) == ["gpu-checks.log", "gpu-results.tar.gz", "gpu-summary.md"]
    # The summary covers this call's benchmark JSONs: not the pass table, not old.json.
    summarised = (out / "gpu-summary.md").read_text().split()
    assert summarised[:2] == ["stub", "scripts/summarise_benchmark.py"]
    shapes = ("embedded", "pythia-1.4b", "pythia-160m", "pythia-410m")
    assert summarised[2:] == [f"benchmarks/results/{name}.json" for name in shapes]


def test_steps_the_budget_cannot_fit_are_skipped_and_said(tmp_path):
    repo, env = _repo(tmp_path)
    out = tmp_path / "out"
    done = _run(repo, out, {**env, "GPU_CHECKS_BUDGET_S": "34", "STUB_SLEEP": "5"})
    assert done.returncode == 0, done.stderr
    log = (out / "gpu-checks.log").read_text()
    assert "== cuda-graph-test (limit 34s)" in log and "== cuda-graph-test: exit 0" in log
    for step in STEPS[1:]:
        assert f"== {step}: skipped" in log
    assert not (out / "gpu-results.tar.gz").exists()  # nothing was written
    assert not (out / "gpu-summary.md").exists()  # so nothing to summarise


def test_the_script_needs_an_output_folder(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "usage: bash scripts/gpu_checks.sh OUTDIR" in done.stderr
