"""Any registered lm-eval task from local files: ``DIR/<task>_<split>.jsonl`` (or ``.parquet``).

Compute nodes often have no internet, so a task's data may only exist as files a user copied
over. The local variant is derived from the task's own lm-eval YAML (``include``): its
``process_docs``, prompts, choices and metrics stay lm-eval's, only the dataset is swapped for
the local files, for the split lm-eval scores (test if the task has one, else validation),
falling back to validation, with a note, where the scored split's file is absent. No list of
tasks is written by hand: lm-eval's own task folder is the registry, with this project's own
task YAMLs (``task_yaml/``, e.g. ``cnn_dm_layerskip``) registered beside it the same way.

`load_config_lazy` reads a task's config with its ``!function`` references left unresolved
(`FunctionRef`): importing a metric's module can fail offline (humaneval's loads HF
``evaluate``'s ``code_eval`` from the hub at import), and such a metric is then skipped by the
caller instead of failing the whole task.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lm_eval
import yaml
from lm_eval.tasks._yaml_loader import _import_func_in_yml, load_yaml

__all__ = [
    "FORMATS",
    "PROJECT_TASKS_DIR",
    "FunctionRef",
    "LocalVariant",
    "candidate_files",
    "fewshot_source",
    "lm_eval_task_yaml",
    "load_config_lazy",
    "local_variant",
    "project_task_names",
    "scored_split",
    "task_config",
]

# File suffix -> the `datasets` builder that reads it (lm-eval's `dataset_path`).
FORMATS = {".jsonl": "json", ".parquet": "parquet"}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
_TASK_LINE = re.compile(r"^task:[ \t]*['\"]?([A-Za-z0-9_.\-]+)['\"]?[ \t]*(?:#.*)?$", re.MULTILINE)
# This project's own lm-eval task YAMLs (LayerSkip's summarisation prompts), registered like lm-eval's.
PROJECT_TASKS_DIR = Path(__file__).resolve().parent / "task_yaml"


@dataclass(frozen=True)
class LocalVariant:
    """The lm-eval config of a task reading local files, and what it reads."""

    config: dict[str, Any]
    files: tuple[Path, ...]
    split: str  # the split that is scored
    note: str
    fallback: bool = False  # scored on validation because the split lm-eval scores is absent
    missing_fewshot: str | None = None  # the split a few-shot task draws its examples from, not there


def lm_eval_tasks_dir() -> Path:
    return Path(lm_eval.__file__).parent / "tasks"


def _scan(folder: Path, index: dict[str, Path]) -> None:
    for path in sorted(folder.rglob("*.yaml"), key=lambda p: p.as_posix()):
        if "__pycache__" in path.parts:
            continue
        for name in _TASK_LINE.findall(path.read_text(encoding="utf-8", errors="replace")):
            index.setdefault(name, path)


@functools.cache
def _task_yaml_index() -> dict[str, Path]:
    """Task name -> YAML in lm-eval's task folder (then this project's), from a text scan of every
    ``task: NAME`` line.

    lm-eval's own TaskManager parses all ~14k YAMLs (~10 s on a small CPU); the scan finds the
    same single-task files in under a second. Duplicates keep the first file in sorted order,
    as lm-eval does; lm-eval's names win over the project's.
    """
    index: dict[str, Path] = {}
    _scan(lm_eval_tasks_dir(), index)
    _scan(PROJECT_TASKS_DIR, index)
    return index


def project_task_names() -> list[str]:
    """This project's own task names (``task_yaml/``), for error messages."""
    index: dict[str, Path] = {}
    _scan(PROJECT_TASKS_DIR, index)
    return sorted(index)


def lm_eval_task_yaml(name: str) -> Path | None:
    """The YAML that defines lm-eval task ``name`` (groups and tags have none), or None."""
    return _task_yaml_index().get(name)


def lm_eval_task_names() -> list[str]:
    return sorted(_task_yaml_index())


def task_config(yaml_path: Path) -> dict[str, Any]:
    """A task's full config with its ``include`` chain merged (functions left as paths)."""
    return load_yaml(yaml_path, resolve_func=False)


@dataclass(frozen=True)
class FunctionRef:
    """A YAML ``!function module.name`` not yet imported (its module may fail to load offline)."""

    base_dir: Path  # the folder of the YAML that names it (lm-eval looks for ``module.py`` there)
    spec: str

    @property
    def name(self) -> str:
        return self.spec.rpartition(".")[2]

    def resolve(self) -> Callable:
        """Import it exactly as lm-eval's YAML loader does."""
        return _import_func_in_yml(self.spec, self.base_dir)


def _lazy_loader(base_dir: Path) -> type:
    class Loader(yaml.SafeLoader): ...

    def function(loader: yaml.SafeLoader, node: yaml.Node) -> FunctionRef:
        return FunctionRef(base_dir, str(loader.construct_scalar(node)))  # type: ignore[arg-type]

    Loader.add_constructor("!function", function)
    return Loader


def load_config_lazy(path: str | Path, _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """A task's config with its ``include`` chain merged as lm-eval merges it (included files
    first, the file's own keys win), ``!function`` values left as `FunctionRef`."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise ValueError(f"Include cycle at {path}")
    with path.open("rb") as fh:
        cfg = yaml.load(fh, Loader=_lazy_loader(path.parent))  # a SafeLoader, plus !function
    if not isinstance(cfg, dict):
        raise ValueError(f"Expected YAML dict from {path}, got {type(cfg).__name__}")
    if "include" not in cfg:
        return cfg
    includes = cfg.pop("include")
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        inc_cfg = load_config_lazy(inc_path, _seen | {path})
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    merged.update(cfg)
    return merged


def fewshot_source(config: dict[str, Any]) -> str | None:
    """The split a few-shot task draws its examples from (its ``fewshot_split``, else its training
    split), or None: zero-shot, examples given inline, or lm-eval's validation/test rule."""
    if not (config.get("num_fewshot") or 0) > 0:
        return None
    fewshot = config.get("fewshot_config") or {}
    if isinstance(fewshot, dict) and fewshot.get("samples") is not None:
        return None
    return config.get("fewshot_split") or config.get("training_split")


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
    wanted = fewshot_source(config)
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
    shots_key = "fewshot_split" if config.get("fewshot_split") else "training_split"
    missing = wanted if wanted is not None and local[shots_key] is None else None
    return LocalVariant(local, tuple(p.resolve() for p in files.values()), split, note, fallback, missing)
