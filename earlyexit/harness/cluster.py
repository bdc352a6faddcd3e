"""What a sweep on a SLURM cluster needs before it submits anything, and a quiet console while it polls.

Checked by run.py before Hydra starts (`launcher_problem`): a SLURM launcher needs `sbatch` on this
machine, else the command fails naming what is missing, before anything is submitted.

Job states without accounting: submitit asks `sacct` for its jobs' states on every poll, and a
cluster without accounting (common on small sites, and the one-node cluster of
scripts/slurm_local.sh) makes every call fail. submitit then warns on every poll (three warnings
per poll buried the sweep's output; sacct's own stderr line added a fourth), and it can only learn
that a job ended from the job's result file: a job cancelled with `scancel`, or killed before it
wrote one, never ends for it, and the sweep waits forever. `SqueueStates` asks sacct once, quietly;
when it fails, it says so in one line and reads the states from `squeue --states=all`, which lists
finished, failed and cancelled jobs for the controller's MinJobAge (300 s by default). A job that
squeue no longer lists has ended too. `QuietSacct` turns any remaining sacct warning of submitit's
into the same single line.
"""

from __future__ import annotations

import getpass
import logging
import shutil
import subprocess
import time

from omegaconf import DictConfig, OmegaConf
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)

SACCT_ERROR = "Bypassing sacct error"
NO_ACCOUNTING = (
    "sacct fails on this cluster (no job accounting): the jobs' states are read from squeue instead; "
    "further sacct errors are not shown"
)
# squeue's view of a job, in sacct's `--parsable2` layout so submitit's own parser reads it.
SQUEUE = ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N"]
SACCT_HEADER = "JobID|State|NodeList"
# The state given to a job squeue no longer lists: it ended (MinJobAge passed) and, without a
# result file, did not finish (submitit then reports it as not having produced any output).
GONE = "GONE"


class QuietSacct(logging.Filter):
    """Turns submitit's repeated sacct warnings into one explanatory line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if SACCT_ERROR not in record.getMessage():
            return True
        self.seen += 1
        if self.seen == 1 and not SqueueStates.said:  # once: submitit's own handlers would repeat it
            SqueueStates.said = True
            log.warning("%s", NO_ACCOUNTING)
        return False


class SqueueStates(SlurmInfoWatcher):
    """submitit's SLURM job watcher, reading states from squeue when sacct fails (module docstring).

    `update` is submitit's own (submitit 1.5: call, parse, mark finished jobs), with the call made
    quietly and the squeue fallback; everything else is inherited.
    """

    said = False  # the one line about missing accounting, shared with QuietSacct

    def __init__(self, delay_s: int = 600) -> None:
        super().__init__(delay_s=delay_s)
        self.accounting: bool | None = None  # unknown until sacct has been tried

    def update(self) -> None:
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        info = self._sacct(command) if self.accounting is not False else None
        if info is None:
            info = self._squeue()
        if info is not None:
            self._info_dict.update(info)
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def _sacct(self, command: list[str]) -> dict | None:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            self.accounting = True
            return self.read_info(done.stdout)
        if self.accounting is None and not SqueueStates.said:
            SqueueStates.said = True
            log.warning(
                "%s (sacct said: %s)", NO_ACCOUNTING, done.stderr.strip() or f"exit {done.returncode}"
            )
        self.accounting = False
        return None

    def _squeue(self) -> dict | None:
        try:
            done = subprocess.run([*SQUEUE, f"--user={getpass.getuser()}"], capture_output=True, text=True)
        except OSError:
            return None
        if done.returncode != 0:  # the controller does not answer: learn nothing, try again next poll
            return None
        info = self.read_info(f"{SACCT_HEADER}\n{done.stdout}")
        for job_id in self._registered - self._finished:
            if job_id not in info:
                info[job_id] = {"JobID": job_id, "State": GONE, "NodeList": ""}
        return info


def quiet_submitit() -> QuietSacct:
    """Read job states from squeue when sacct fails (`SqueueStates`, installed as the watcher of
    submitit's SLURM jobs) and filter submitit's sacct warnings; idempotent; returns the filter."""
    if not isinstance(SlurmJob.watcher, SqueueStates):
        SlurmJob.watcher = SqueueStates(delay_s=600)
    logger = logging.getLogger("submitit")
    for existing in logger.filters:
        if isinstance(existing, QuietSacct):
            return existing
    quiet = QuietSacct()
    logger.addFilter(quiet)
    return quiet


def is_slurm_launcher(config: DictConfig) -> bool:
    target = OmegaConf.select(config, "hydra.launcher._target_", default="") or ""
    return "SlurmLauncher" in str(target)


def launcher_problem(argv: list[str]) -> str | None:
    """Why the command line's SLURM launcher cannot submit from this machine (no `sbatch`), or None.

    Read from the arguments, before Hydra starts: Hydra turns a callback's exception into a warning
    and goes on to the launcher, whose own error names `srun` after a traceback.
    """
    slurm = [a for a in argv[1:] if a.startswith("hydra/launcher=") and "slurm" in a]
    if not slurm or shutil.which("sbatch") is not None:
        return None
    return (
        f"{slurm[0]} needs SLURM's sbatch on this machine's PATH, and none was found: run the sweep on "
        "a cluster login node, start a one-node cluster here with `bash scripts/slurm_local.sh up`, or "
        "drop the launcher to run the jobs here"
    )
