"""Which lm-eval tasks a run scores, their offline variants, and running them.

The standard tasks go through lm-eval's own registry (they need the Hugging Face hub);
``*_local`` variants reuse lm-eval's own YAML (``include``) but read ``../shared/data/eval``;
``stdlib_lambada`` (``stdlib_task``) is generated from the held-out stdlib corpus, so it works
anywhere.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lm_eval
import yaml
from lm_eval.tasks import TaskManager

from earlyexit.harness.stdlib_task import STDLIB_TASK, stdlib_task_config

log = logging.getLogger(__name__)

__all__ = [
    "LOCAL_TASKS",
    "STANDARD_TASKS",
    "STDLIB_TASK",
    "LocalTask",
    "default_cache_dir",
    "evaluate",
    "resolve_tasks",
    "valid_tasks",
    "validate_tasks",
    "write_task_configs",
]

STANDARD_TASKS = ("lambada_openai", "piqa", "arc_easy", "sciq", "hellaswag", "winogrande")


@dataclass(frozen=True)
class LocalTask:
    """An offline copy of an lm-eval task: its YAML, with the dataset swapped for a local JSONL."""

    name: str
    base: str  # lm-eval's own YAML, relative to lm_eval/tasks
    data_file: str  # under ../shared/data/eval
    split: str  # the split the local file holds (and that gets scored)
    note: str


LOCAL_TASKS: dict[str, LocalTask] = {
    t.name: t
    for t in (
        LocalTask(
            "lambada_openai_local",
            "lambada/lambada_openai.yaml",
            "lambada_openai_test.jsonl",
            "test",
            "lambada_openai from a local JSONL; same split (test) and scoring as lm-eval's",
        ),
        LocalTask(
            "piqa_local",
            "piqa/piqa.yaml",
            "piqa_validation.jsonl",
            "validation",
            "piqa from a local JSONL; same split (validation) and scoring as lm-eval's",
        ),
        LocalTask(
            "arc_easy_local",
            "arc/arc_easy.yaml",
            "arc_easy_validation.jsonl",
            "validation",
            "arc_easy scored on the VALIDATION split (lm-eval's arc_easy scores test, not available here)",
        ),
        LocalTask(
            "sciq_local",
            "sciq/sciq.yaml",
            "sciq_validation.jsonl",
            "validation",
            "sciq scored on the VALIDATION split (lm-eval's sciq scores test, not available here)",
        ),
    )
}
LOCAL_OF = {t.base.split("/")[-1].removesuffix(".yaml"): t.name for t in LOCAL_TASKS.values()}


def valid_tasks() -> list[str]:
    return [*STANDARD_TASKS, *LOCAL_TASKS, STDLIB_TASK]


def validate_tasks(names: list[str] | tuple[str, ...] | str) -> list[str]:
    """Check task names before anything expensive (e.g. loading a model) happens."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"no tasks given; valid tasks: {', '.join(valid_tasks())}")
    bad = [n for n in names if n not in valid_tasks()]
    if bad:
        raise ValueError(
            f"unknown task(s) {', '.join(map(repr, bad))}; valid tasks: standard (lm-eval, needs the "
            f"hub): {', '.join(STANDARD_TASKS)}; local: {', '.join([*LOCAL_TASKS, STDLIB_TASK])}"
        )
    return names


def resolve_tasks(names: list[str] | tuple[str, ...] | str, offline: bool | None = None) -> list[str]:
    """The lm-eval task names to run: offline, standard tasks become their ``*_local`` variants.

    ``offline=None`` means offline when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE says so, or when a
    standard task is asked for and the hub does not answer.
    """
    names = validate_tasks(names)
    standard = [n for n in names if n in STANDARD_TASKS]
    if offline is None:
        offline = _env_offline() or (bool(standard) and _hub_unreachable())
    if not offline:
        return names
    missing = [n for n in standard if n not in LOCAL_OF]
    if missing:
        raise ValueError(
            f"task(s) {', '.join(missing)} need the Hugging Face hub and have no local variant; offline "
            f"tasks: {', '.join([*LOCAL_TASKS, STDLIB_TASK])}"
        )
    resolved = [LOCAL_OF.get(n, n) for n in names]
    if standard:
        log.warning("offline: running %s instead of %s", [LOCAL_OF[n] for n in standard], standard)
    return list(dict.fromkeys(resolved))


def _env_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def _hub_unreachable() -> bool:
    from earlyexit.model.loading import hub_unreachable_reason

    reason = hub_unreachable_reason()
    if reason is not None:
        log.warning("the Hugging Face hub cannot be reached (%s); using local task variants", reason)
    return reason is not None


def _lm_eval_yaml(relative: str) -> Path:
    path = Path(lm_eval.__file__).parent / "tasks" / relative
    if not path.is_file():
        raise FileNotFoundError(f"lm-eval {lm_eval.__version__} has no task config {relative} ({path})")
    return path


def _local_config(task: LocalTask, data_dir: Path | None) -> dict[str, Any]:
    path = (data_dir / task.data_file) if data_dir is not None else None
    if path is None or not path.is_file():
        where = path or f"../shared/data/eval/{task.data_file} (no ../shared/data next to the repository)"
        base = task.base.split("/")[-1].removesuffix(".yaml")
        raise FileNotFoundError(
            f"task {task.name!r} reads {where}, which does not exist; put the file there or run the "
            f"standard task {base!r} with hub access"
        )
    base = _lm_eval_yaml(task.base)
    # Only the local split exists; lm-eval scores test if present, else validation.
    splits = {"training_split": None, "validation_split": None, "test_split": None}
    splits[f"{task.split}_split"] = task.split
    return {
        "include": str(base),
        "task": task.name,
        "tag": [],  # keep the local copy out of lm-eval's tag groups (e.g. "lambada", "ai2_arc")
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {task.split: str(path.resolve())}},
        **splits,
        "metadata": {**_base_metadata(base), "note": task.note},
    }


def _base_metadata(path: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(path.read_text()).get("metadata") or {}
    except yaml.YAMLError:  # a YAML with !function tags; the version is only informative
        meta = {}
    return dict(meta)


def default_cache_dir() -> Path:
    """Where generated task data lives: ``$EARLYEXIT_CACHE/eval`` (default ``artifacts/eval``)."""
    return Path(os.environ.get("EARLYEXIT_CACHE", "artifacts")) / "eval"


def write_task_configs(
    tasks: list[str],
    include_dir: str | Path,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> list[Path]:
    """Write the YAMLs of the local tasks among ``tasks`` into ``include_dir`` (absolute paths).

    Relative data paths would resolve against the working directory at evaluation time, so
    every path in the YAML is absolute.
    """
    from earlyexit.data.paths import shared_data_dir

    if data_dir is None:
        shared = shared_data_dir()
        data_dir = shared / "eval" if shared is not None else None
    data = Path(data_dir) if data_dir is not None else None
    written = []
    for name in tasks:
        if name in LOCAL_TASKS:
            config = _local_config(LOCAL_TASKS[name], data)
        elif name == STDLIB_TASK:
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            config = stdlib_task_config(cache, _lm_eval_yaml("lambada/lambada_openai.yaml"))
        else:
            continue
        path = Path(include_dir) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def evaluate(
    lm: lm_eval.api.model.LM,
    tasks: list[str],
    limit: int | None = None,
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Run lm-eval tasks (zero-shot) on ``lm``; returns ``{task: {metric: value}}`` as plain floats.

    Task names are checked first (ValueError lists the valid ones). Results are keyed by the
    task actually run, so an offline ``piqa`` comes back as ``piqa_local``.
    """
    names = resolve_tasks(tasks, offline)
    needs_defaults = any(n in STANDARD_TASKS for n in names)
    with tempfile.TemporaryDirectory(prefix="earlyexit-tasks-") as include_dir:
        write_task_configs(names, include_dir, cache_dir=cache_dir, data_dir=data_dir)
        # Indexing lm-eval's own ~15k task YAMLs takes ~10 s: only when a standard task needs it.
        manager = TaskManager(include_path=include_dir, include_defaults=needs_defaults)
        missing = [n for n in names if n not in manager.all_tasks]
        if missing:
            raise RuntimeError(f"lm-eval did not register task(s) {missing} (a task config failed to parse)")
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
        )
    return {task: _plain_metrics(values) for task, values in out["results"].items() if task in names}


def _plain_metrics(values: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}`` -> ``{"acc": 0.5}``."""
    metrics = {}
    for key, value in values.items():
        if "," not in key or isinstance(value, str | bool) or value is None:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        try:
            metrics[name] = float(value)
        except (TypeError, ValueError):
            continue
        if math.isnan(metrics[name]) and name.endswith("_stderr"):
            del metrics[name]
    return metrics
