"""A Hydra multirun through the submitit SLURM launcher on a real scheduler, to completion.

Runs with `make test-slurm` (scripts/slurm_local.sh brings up a one-node cluster here); skipped in
`make test`, and with a reason when no SLURM answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
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


def _logged(sweep_dir: Path, line: str) -> int:
    """How many of the sweep's job logs (Hydra's, one per job) hold ``line``."""
    return sum(line in log.read_text() for log in sweep_dir.glob("*/*.log"))


def test_a_sweep_runs_every_job_to_one_shared_store_and_makes_shared_artifacts_once(tmp_path):
    # Heads nobody has trained (the shipped ones are for the default training): both jobs need them.
    heads = ["train.steps=20", "train.seq_len=64", "train.warmup=2"]
    done = _sweep(tmp_path, "mode=early-exit", "calibration.target=0.8,0.95", *heads)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sorted(r["config.calibration.target"] for r in records) == [0.8, 0.95]
    assert all(r["status"] == "ok" for r in records)
    assert _logged(tmp_path / "sweep", "heads: trained and stored") == 1, "one job trains, the other reuses"
    assert _logged(tmp_path / "sweep", "heads: cached") == 1
    assert len(list((tmp_path / "cache" / "heads").glob("*.safetensors"))) == 1
    calibrations = list((tmp_path / "cache" / "calibration").glob("*.result.json"))
    assert len(calibrations) == 1, "both jobs share one calibration, made once"
    console = done.stdout + done.stderr
    assert console.count("sacct fails on this cluster") <= 1 and "Bypassing sacct error" not in console
    # sacct's own stderr line printed on every poll before; now it is quoted once, in that one line.
    assert console.count("Slurm accounting storage is disabled") <= 1
    again = _sweep(tmp_path, "mode=early-exit", "calibration.target=0.8,0.95", *heads)  # nothing missing
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


def _squeue(*fields: str) -> list[list[str]]:
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--format={'|'.join(fields)}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return [line.split("|") for line in out.stdout.splitlines() if line.strip()]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: {_squeue('%i', '%T')}")
        time.sleep(1)


def test_a_cancelled_job_ends_the_wait_leaves_the_others_records_and_is_rerun_by_a_resubmission(tmp_path):
    before = {job for job, _ in _squeue("%i", "%T")}
    cmd = [
        sys.executable, "run.py", "-m", "hydra/launcher=slurm_cpu", *TINY, "mode=early-exit",
        "calibration.target=0.8,0.95", f"results.path={tmp_path / 'records.jsonl'}",
        f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    sweep = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def ours() -> dict[str, str]:
        return {job: state for job, state in _squeue("%i", "%T") if job not in before}

    _wait(lambda: any(job.endswith("_1") and state == "RUNNING" for job, state in ours().items()), 300,
          "the sweep's second job to run")  # fmt: skip
    second = next(job for job in ours() if job.endswith("_1"))
    subprocess.run(["scancel", second], check=True, timeout=30)
    try:
        sweep.wait(timeout=600)  # without accounting, submitit learns of the cancel from squeue
    finally:
        sweep.kill()
    console = sweep.stdout.read()
    assert sweep.returncode != 0, console[-3000:]
    assert second in console and "CANCELLED" in console, console[-3000:]  # the user is told which job
    _wait(lambda: all(state not in ("RUNNING", "PENDING", "COMPLETING") for state in ours().values()), 300,
          "the other job to finish")  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [(r["config.calibration.target"], r["status"]) for r in records] == [(0.8, "ok")], records
    again = _sweep(tmp_path, "mode=early-exit", "calibration.target=0.8,0.95")
    assert again.returncode == 0, again.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sorted((r["config.calibration.target"], r["status"]) for r in records) == [
        (0.8, "ok"),
        (0.95, "ok"),
    ]
