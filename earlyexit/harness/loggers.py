"""Mirror each run's record to an experiment tracker (`logger=wandb`), after it is safely stored.

The local results store stays the record of truth: a tracker is a view for dashboards and the
input of W&B sweeps. So logging happens after the record is appended, and any tracker failure
(no network, no credentials, wandb missing, a bad setting) becomes a warning, never a lost record
or a failed run. Every W&B run is finished in a `finally`, so the next job of a Hydra multirun (or
of a sweep agent) never finds a dangling run or waits on one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

LOGGERS = ("none", "wandb")

# Argument forms under which a W&B sweep agent may pass a run's internal `_wandb` config back
# (args_no_hyphens, hydra append/override, plain flags); see `strip_wandb_args`.
WANDB_ARG_PREFIXES = ("_wandb=", "+_wandb=", "++_wandb=", "--_wandb=")


def strip_wandb_args(argv: list[str]) -> list[str]:
    """`argv` without the `_wandb=...` argument a W&B agent adds to resumed or rerun sweep runs.

    That argument carries W&B's own bookkeeping as a Python dict repr: it is no key of ours and no
    valid Hydra override, so Hydra would stop before the run starts.
    """
    return [arg for arg in argv if not arg.startswith(WANDB_ARG_PREFIXES)]


def log_run(cfg: DictConfig, flat_config: dict, record: dict) -> None:
    """Send one stored record (ok or failed) to the configured tracker; never raises for its failures."""
    name = OmegaConf.select(cfg, "logger.name", default="none")
    if name in (None, "none"):
        return
    if name != "wandb":
        log.warning("logger.name=%r is not one of %s: nothing logged", name, ", ".join(LOGGERS))
        return
    try:
        _log_wandb(cfg.logger, flat_config, record)
    except Exception as err:  # the record is already stored: a tracker problem must not fail the run
        where = OmegaConf.select(cfg, "results.path", default="the results store")
        log.warning("W&B logging failed (%s: %s); the record is kept in %s", type(err).__name__, err, where)


def run_name(flat_config: dict) -> str:
    """Short readable W&B run name: model, mode and what the mode was run at."""
    model = Path(str(flat_config.get("model.name", "model"))).name
    mode = flat_config.get("mode.name", "mode")
    if mode == "full":
        return f"{model}-full"
    if mode == "layerskip":
        return (
            f"{model}-layerskip-E{flat_config.get('mode.exit_layer')}-K{flat_config.get('mode.draft_length')}"
        )
    return f"{model}-{mode}-{flat_config.get('metric.name')}-t{flat_config.get('calibration.target')}"


def scalar_metrics(record: dict) -> dict[str, float | int | bool]:
    """Every numeric `metric.*` column of a record, under its name without the prefix."""
    return {
        key.removeprefix("metric."): value
        for key, value in record.items()
        if key.startswith("metric.") and isinstance(value, int | float | bool)
    }


def exit_histogram(record: dict) -> dict[int, int]:
    """Exits per layer during decoding (the record holds it as a JSON string)."""
    raw = record.get("metric.exit_histogram")
    hist = json.loads(raw) if isinstance(raw, str) else {}
    return {int(layer): int(count) for layer, count in sorted(hist.items(), key=lambda kv: int(kv[0]))}


def _log_wandb(lcfg: DictConfig, flat_config: dict, record: dict) -> None:
    import wandb  # only when asked for: importing wandb is slow and it is an optional sink

    failed = record.get("status") != "ok"
    run = wandb.init(
        project=lcfg.get("project"),
        entity=lcfg.get("entity"),
        mode=lcfg.get("mode"),
        group=lcfg.get("group"),
        tags=[str(t) for t in (lcfg.get("tags") or [])],
        name=run_name(flat_config),
        config=flat_config,
        # A multirun calls this once per job in one process: close anything left open first.
        reinit="finish_previous",
        # Logging starts after the run is over: no console to capture, no system metrics to sample.
        settings=wandb.Settings(console="off", x_disable_stats=True),
    )
    try:
        payload: dict[str, Any] = dict(scalar_metrics(record))
        hist = exit_histogram(record)
        if hist:
            total = sum(hist.values()) or 1
            rows = [[str(layer), count, count / total] for layer, count in hist.items()]
            table = wandb.Table(columns=["layer", "exits", "share"], data=rows)
            payload["exit_histogram"] = wandb.plot.bar(table, "layer", "exits", title="exits per layer")
        per_head = json.loads(record["per_head"]) if record.get("per_head") else None
        if per_head:
            columns = sorted({k for stats in per_head.values() for k in stats})
            data = [[int(layer), *(stats.get(c) for c in columns)] for layer, stats in per_head.items()]
            payload["per_head"] = wandb.Table(columns=["layer", *columns], data=data)
        run.log(payload)
        run.summary.update(
            {
                "status": record.get("status"),
                "run_id": record.get("run_id"),
                "config_key": record.get("config_key"),
            }
        )
        if failed and record.get("error"):
            lines = record["error"].strip().splitlines()
            run.summary.update({"error": lines[-1] if lines else "", "traceback": record["error"]})
    finally:
        run.finish(exit_code=1 if failed else 0)
