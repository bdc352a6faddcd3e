"""Any registered lm-eval task from local files: ``DIR/<task>_<split>.jsonl`` (or ``.parquet``).

Compute nodes often have no internet, so a task's data may only exist as files a user copied
over. The local variant is derived from the task's own lm-eval YAML (``include``): its
``process_docs``, prompts, choices and metrics stay lm-eval's, only the dataset is swapped for
the local files, for the split lm-eval scores (test if the task has one, else validation),
falling back to validation, with a note, where the scored split's file is absent. No list of
tasks is written by hand: lm-eval's own task folder is the registry.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lm_eval
from lm_eval.tasks._yaml_loader import load_yaml

__all__ = [
    "FORMATS",
    "LocalVariant",
    "candidate_files",
    "lm_eval_task_yaml",
    "local_variant",
    "scored_split",
    "task_config",
]

# File suffix -> the `datasets` builder that reads it (lm-eval's `dataset_path`).
FORMATS = {".jsonl": "json", ".parquet": "parquet"}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
_TASK_LINE = re.compile(r"^task:[ \t]*['\"]?([A-Za-z0-9_.\-]+)['\"]?[ \t]*(?:#.*)?$", re.MULTILINE)


@dataclass(frozen=True)
class LocalVariant:
    """The lm-eval config of a task reading local files, and what it reads."""

    config: dict[str, Any]
    files: tuple[Path, ...]
    split: str  # the split that is scored
    note: str
    fallback: bool = False  # scored on validation because the split lm-eval scores is absent


def lm_eval_tasks_dir() -> Path:
    return Path(lm_eval.__file__).parent / "tasks"


@functools.cache
def _task_yaml_index() -> dict[str, Path]:
    """Task name -> YAML in lm-eval's task folder, from a text scan of every ``task: NAME`` line.

    lm-eval's own TaskManager parses all ~14k YAMLs (~10 s on a small CPU); the scan finds the
    same single-task files in under a second. Duplicates keep the first file in sorted order,
    as lm-eval does.
    """
    index: dict[str, Path] = {}
    for path in sorted(lm_eval_tasks_dir().rglob("*.yaml"), key=lambda p: p.as_posix()):
        if "__pycache__" in path.parts:
            continue
        for name in _TASK_LINE.findall(path.read_text(encoding="utf-8", errors="replace")):
            index.setdefault(name, path)
    return index


def lm_eval_task_yaml(name: str) -> Path | None:
    """The YAML that defines lm-eval task ``name`` (groups and tags have none), or None."""
    return _task_yaml_index().get(name)


def lm_eval_task_names() -> list[str]:
    return sorted(_task_yaml_index())


def task_config(yaml_path: Path) -> dict[str, Any]:
    """A task's full config with its ``include`` chain merged (functions left as paths)."""
    return load_yaml(yaml_path, resolve_func=False)


def scored_split(config: dict[str, Any]) -> str | None:
    """The split lm-eval scores: test if the task has one, else validation."""
    return config.get("test_split") or config.get("validation_split")


def candidate_files(task: str, data_dir: Path, split: str) -> list[Path]:
    """``DIR/<task>_<split>.jsonl`` and ``.parquet``, in order of preference."""
    return [data_dir / f"{task}_{split}{suffix}" for suffix in FORMATS]


def _first_existing(task: str, data_dir: Path, split: str) -> Path | None:
    return next((p for p in candidate_files(task, data_dir, split) if p.is_file()), None)


def local_variant(task: str, yaml_path: Path, data_dir: Path) -> LocalVariant | None:
    """The task reading ``data_dir``, or None when neither its scored split nor validation is there."""
    config = task_config(yaml_path)
    scored_key = "test_split" if config.get("test_split") else "validation_split"
    scored = config.get(scored_key)
    if not scored:
        return None
    found, split, key = _first_existing(task, data_dir, scored), scored, scored_key
    note = f"{task} from {data_dir}: the split lm-eval scores ({scored}), lm-eval's prompts and metrics"
    fallback = found is None and scored != "validation"
    if fallback:
        found, split, key = _first_existing(task, data_dir, "validation"), "validation", "validation_split"
        note = (
            f"{task} scored on the VALIDATION split from {data_dir}: lm-eval scores {scored}, "
            f"and {task}_{scored}.jsonl/.parquet is not there"
        )
    if found is None:
        return None
    files = {split: found}
    splits: dict[str, str | None] = {}
    for other_key in SPLIT_KEYS:
        if other_key == key:
            splits[other_key] = split
            continue
        name = config.get(other_key)
        other = data_dir / f"{task}_{name}{found.suffix}" if name else None
        # Other splits the task names (few-shot examples, training docs) come along when their
        # file is there in the same format; absent ones are switched off, never left on the hub.
        # After a fallback to validation there is no test split at all.
        if other is None or (other_key == "test_split" and key != scored_key) or not other.is_file():
            splits[other_key] = None
        else:
            files.setdefault(name, other)
            splits[other_key] = name
    local = {
        "include": str(yaml_path),
        "task": task,
        "tag": [],  # keep the local copy out of lm-eval's tag groups (e.g. "ai2_arc")
        "dataset_path": FORMATS[found.suffix],
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {s: str(p.resolve()) for s, p in files.items()}},
        **splits,
        "metadata": {**dict(config.get("metadata") or {}), "note": note},
    }
    return LocalVariant(local, tuple(p.resolve() for p in files.values()), split, note, fallback)
