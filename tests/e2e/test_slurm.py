"""A Hydra multirun through the submitit SLURM launcher on a real scheduler, to completion.

Runs with `make test-slurm` (scripts/slurm_local.sh brings up a one-node cluster here); skipped in
`make test`, and with a reason when no SLURM answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "task=none", "bench.prompts=2", "bench.max_new_tokens=8", "bench.repeats=1", "bench.warmup=0",
    "bench.profile_repeats=2", "calibration.max_tokens=2048",
]  # fmt: skip

pytestmark = pytest.mark.slurm


def _slurm_answers() -> str | None:
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH (bash scripts/slurm_local.sh up)"
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = probe.stdout.split()
    if probe.returncode != 0 or not any(s in ("idle", "mixed", "allocated") for s in states):
        return f"SLURM does not answer with an up node ({probe.stderr.strip() or states})"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_up():
    reason = _slurm_answers()
    if reason is not None:
        pytest.skip(reason)


def _sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "run.py", "-m", "hydra/launcher=slurm_cpu", *TINY, *overrides,
        f"results.path={tmp_path / 'records.jsonl'}", f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)


def test_a_sweep_runs_every_job_to_one_shared_store_and_makes_shared_artifacts_once(tmp_path):
    done = _sweep(tmp_path, "mode=early-exit", "calibration.target=0.8,0.95")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sorted(r["config.calibration.target"] for r in records) == [0.8, 0.95]
    assert all(r["status"] == "ok" for r in records)
    calibrations = list((tmp_path / "cache" / "calibration").glob("*.result.json"))
    assert len(calibrations) == 1, "both jobs share one calibration, made once"
    console = done.stdout + done.stderr
    assert console.count("sacct fails on this cluster") <= 1 and "Bypassing sacct error" not in console
    again = _sweep(tmp_path, "mode=early-exit", "calibration.target=0.8,0.95")  # resubmitted: nothing missing
    assert again.returncode == 0
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 2


def test_a_job_with_a_bad_value_is_reported_while_the_others_complete(tmp_path):
    done = _sweep(tmp_path, "mode=early-exit", "calibration.target=0.8,1.5")
    assert done.returncode == 1  # the sweep lists its failed job and exits non-zero
    assert "1 job(s) of this sweep failed" in done.stdout + done.stderr
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    by_target = {r["config.calibration.target"]: r for r in records}
    assert by_target[0.8]["status"] == "ok" and by_target[1.5]["status"] == "failed"  # refused, recorded
    assert "calibration" in by_target[1.5]["error"]
