"""Hydra entry point: `python run.py [-m] model=... heads=... metric=... mode=... task=...`."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from earlyexit.harness.loggers import strip_wandb_args
from earlyexit.harness.runner import record_run


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    record_run(cfg, output_dir=hydra_cfg.runtime.output_dir, multirun=hydra_cfg.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    # A W&B sweep agent that resumes or reruns a run appends that run's internal config as one more
    # argument, `_wandb={...}` (a Python dict repr): no key of ours and no valid Hydra override, so
    # Hydra would refuse the whole command line. Drop it before Hydra parses sys.argv.
    sys.argv = strip_wandb_args(sys.argv)
    main()
