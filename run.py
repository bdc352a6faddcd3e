"""Hydra entry point: `python run.py [-m] model=... heads=... metric=... mode=... task=...`.

What the console shows: a run's progress and summary, and when it fails one line naming the
cause (the traceback goes to the run's folder and the results store); a sweep whose jobs failed
lists them and exits 1; Ctrl-C ends with one line (every finished run is already stored).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from earlyexit.harness.cluster import launcher_problem
from earlyexit.harness.job_status import FAILED
from earlyexit.harness.loggers import strip_wandb_args
from earlyexit.harness.runner import record_run

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    out = hydra_cfg.runtime.output_dir
    try:
        record_run(cfg, output_dir=out, multirun=multirun, overrides=list(hydra_cfg.overrides.task))
    except Exception as err:  # a single run: one line here, the traceback in the run's folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        trace = Path(out) / "traceback.txt"
        where = f" (traceback: {trace})" if trace.is_file() else ""
        print(f"error: {type(err).__name__}: {first}{where}", file=sys.stderr)
        sys.exit(1)


def group_hint(argv: list[str]) -> str | None:
    """``task=NAME`` where conf/task has no NAME: say that any lm-eval task runs as
    ``task.names=[NAME]`` (Hydra alone would only say it cannot find 'task/NAME')."""
    for arg in argv[1:]:
        if not arg.startswith("task="):
            continue
        options = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
        missing = [v for v in arg[len("task=") :].split(",") if v and v not in options]
        if missing:
            names = ",".join(missing)
            return (
                f"task={missing[0]} is not a task config (conf/task: {', '.join(options)}); any lm-eval "
                f"task runs as task.names=[{names}] (with task.data_dir=DIR offline), e.g. "
                f"`python run.py task=none task.names=[{names}]`"
            )
    return None


if __name__ == "__main__":
    # A W&B sweep agent that resumes or reruns a run appends that run's internal config as one more
    # argument, `_wandb={...}` (a Python dict repr): no key of ours and no valid Hydra override, so
    # Hydra would refuse the whole command line. Drop it before Hydra parses sys.argv.
    sys.argv = strip_wandb_args(sys.argv)
    hint = group_hint(sys.argv) or launcher_problem(sys.argv)
    if hint is not None:
        print(f"error: {hint}", file=sys.stderr)
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:
        print(
            "interrupted: every finished run is stored; the same command again runs only what is missing",
            file=sys.stderr,
        )
        sys.exit(130)
    if FAILED:
        sys.exit(1)
