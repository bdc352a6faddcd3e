"""Each job of a sweep leaves a one-line status in its output folder; the sweep reports them.

Hydra's multirun runs every job to the end even when some fail (the runner records a failed
job and goes on), and then exits 0: a sweep whose every job failed looked like a success. A
Hydra callback reads the jobs' status files when the sweep ends, lists the failed ones, and
the entry point exits non-zero. Files, not memory, because SLURM jobs run in other processes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from earlyexit.harness.cluster import is_slurm_launcher, quiet_submitit

log = logging.getLogger(__name__)

__all__ = ["FAILED", "STATUS_FILE", "SweepReport", "sweep_failures", "write_status"]

STATUS_FILE = "job_status.json"
FAILED: list[dict] = []  # the last sweep's failed jobs, read by run.py for its exit status


def write_status(output_dir: str | Path | None, status: str, error: str | None = None, **extra: Any) -> None:
    """``ok``, ``skipped``, ``failed`` or ``refused`` (bad config), with the error's first line."""
    if output_dir is None:
        return
    path = Path(output_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    first = error.strip().splitlines()[-1] if error else None
    path.write_text(json.dumps({"status": status, "error": first, "time": time.time(), **extra}) + "\n")


def sweep_failures(sweep_dir: str | Path, since: float = 0.0) -> list[dict]:
    """Failed or refused jobs under ``sweep_dir`` whose status was written after ``since``."""
    out = []
    for path in sorted(Path(sweep_dir).glob(f"**/{STATUS_FILE}")):
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if status.get("time", 0) >= since and status.get("status") in ("failed", "refused"):
            out.append({**status, "job_dir": str(path.parent)})
    return out


class SweepReport(Callback):
    """Lists a sweep's failed jobs at its end (conf/config.yaml registers it)."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_slurm_launcher(config):  # one line instead of submitit's sacct warning on every poll
            quiet_submitit()
        self.start = time.time()
        FAILED.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = sweep_failures(config.hydra.sweep.dir, self.start)
        FAILED[:] = failed
        if failed:
            log.error("%d job(s) of this sweep failed:", len(failed))
            for job in failed:
                overrides = " ".join(job.get("overrides") or [])
                log.error("  %s [%s] %s: %s", job["job_dir"], overrides, job["status"], job.get("error"))
