"""What a sweep on a SLURM cluster needs before it submits anything, and a quiet console while it polls.

Checked by run.py before Hydra starts (`launcher_problem`): a SLURM launcher needs `sbatch` on this
machine, else the command fails naming what is missing, before anything is submitted.

Quiet polling: submitit asks `sacct` for its jobs' states on every poll, and a cluster without
accounting (common on small sites, and the one-node cluster of scripts/slurm_local.sh) makes
every call fail with a warning: three per poll buried the sweep's own output. The first such
warning is replaced by one line saying what it means; the rest are dropped. submitit then reads
the jobs' states from their own result files, which is all a sweep needs.
"""

from __future__ import annotations

import logging
import shutil

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SACCT_ERROR = "Bypassing sacct error"


class QuietSacct(logging.Filter):
    """Turns submitit's repeated sacct warnings into one explanatory line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if SACCT_ERROR not in record.getMessage():
            return True
        self.seen += 1
        if self.seen == 1:  # said once, through our logger: submitit's own handlers would repeat it
            log.warning(
                "sacct fails on this cluster (no job accounting): submitit reads the jobs' states from "
                "their result files instead; further sacct errors are not shown"
            )
        return False


def quiet_submitit() -> QuietSacct:
    """Install the filter on submitit's logger once (idempotent); returns it."""
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
