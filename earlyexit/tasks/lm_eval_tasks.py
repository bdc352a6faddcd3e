"""Which lm-eval tasks a run scores, where each one's data comes from, and running them.

Every requested task is resolved before any model loads, to one of:

- ``stdlib``: ``stdlib_lambada`` (``stdlib_task``), generated from the held-out stdlib corpus;
- ``include_path``: a task from the user's own lm-eval YAMLs (``task.include_path``, as
  ``lm_eval --include_path`` registers them);
- ``hub``: a registered lm-eval task, online, exactly as lm-eval runs it;
- ``datasets_cache``: the same, offline, from the Hugging Face datasets cache;
- ``data_dir``: offline, the task's own YAML reading ``DIR/<task>_<split>.jsonl|.parquet``
  (``local_tasks``; ``task.data_dir``, default ``../shared/data/eval``).

Offline, each task is built once with lm-eval (which tests one document through its
``process_docs`` and prompts), so missing data or a file whose columns do not fit fails here,
naming the task, what was looked for and the three ways to provide it. A few-shot task whose
examples' split is not in ``task.data_dir`` fails too (no examples are drawn from the scored split).

A ``generate_until`` task is built by `build_task`, which skips the metrics that cannot run here
instead of failing: one whose code cannot be imported or loaded offline (humaneval's ``code_eval``,
a hub-only HF ``evaluate`` metric such as BERTScore) or that raises on a probe document, and every
metric of a task that executes model-written code unless the user opted in (``HF_ALLOW_CODE_EVAL=1``
and ``confirm_run_unsafe_code``, as lm-eval asks). Each skip is warned about, with why, and kept
on the `ResolvedTask` (``skipped_metrics``, ``note``). `score_generations` scores texts with
lm-eval's own filters and ``process_results``, so a quality equals what lm-eval reports.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lm_eval
import yaml
from lm_eval.tasks import TaskManager

from earlyexit.tasks.local_tasks import (
    candidate_files,
    lm_eval_task_names,
    lm_eval_task_yaml,
    local_variant,
    project_task_names,
    scored_split,
    task_config,
)
from earlyexit.tasks.offline import datasets_offline, is_offline
from earlyexit.tasks.stdlib_task import STDLIB_TASK, stdlib_task_config
from earlyexit.tasks.task_build import (
    CODE_EXECUTION_OFF,
    BuiltTask,
    build_task,
    code_execution_allowed,
    score_generations,
)
from earlyexit.tasks.task_checks import TaskDataError, check_documents, scoring_warnings

log = logging.getLogger(__name__)

__all__ = [
    "CODE_EXECUTION_OFF",
    "PYTHIA_SUITE",
    "SOURCES",
    "STDLIB_TASK",
    "BuiltTask",
    "ResolvedTask",
    "TaskDataError",
    "TaskNotAvailableError",
    "build_resolved",
    "build_task",
    "code_execution_allowed",
    "default_cache_dir",
    "default_data_dir",
    "evaluate",
    "resolve_tasks",
    "score_generations",
    "task_identity",
    "validate_tasks",
]

# Examples for error messages only: any registered lm-eval task is accepted.
PYTHIA_SUITE = ("lambada_openai", "piqa", "arc_easy", "sciq", "hellaswag", "winogrande")
SOURCES = ("stdlib", "include_path", "hub", "datasets_cache", "data_dir")


class TaskNotAvailableError(ValueError):
    """A requested task is unknown, or its data cannot be reached; the message says how to provide it."""


@dataclass(frozen=True)
class ResolvedTask:
    """One task of a run and where its data comes from (one of ``SOURCES``)."""

    name: str
    source: str
    yaml: str | None = None  # the task's own YAML (lm-eval's, or the user's)
    config: dict[str, Any] | None = None  # the YAML lm-eval gets for it (None: registered as-is)
    include_dir: str | None = None  # the user's folder that registers it
    files: tuple[str, ...] = ()  # local data files it reads (data_dir)
    split: str | None = None  # the split that is scored, where known
    data: str | None = None  # the loaded dataset's fingerprint, where it was built here
    note: str = ""
    fallback: bool = False  # scored on validation: the split lm-eval scores is not in data_dir
    skipped_metrics: tuple[str, ...] = ()  # metrics that cannot run here (the note says why)


def default_data_dir() -> Path | None:
    """``../shared/data/eval`` next to the repository, where it exists."""
    from earlyexit.data.paths import shared_data_dir

    shared = shared_data_dir()
    return shared / "eval" if shared is not None and (shared / "eval").is_dir() else None


def default_cache_dir() -> Path:
    """Where generated task data lives: ``$EARLYEXIT_CACHE/eval`` (default ``artifacts/eval``)."""
    return Path(os.environ.get("EARLYEXIT_CACHE", "artifacts")) / "eval"


def _include_dirs(include_path: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if include_path in (None, "", []):
        return []
    items = [include_path] if isinstance(include_path, str | Path) else list(include_path)
    dirs = [Path(p).expanduser() for p in items]
    for d in dirs:
        if not d.is_dir():
            raise TaskNotAvailableError(
                f"task.include_path={str(d)!r} does not exist or is not a folder; expected a folder of "
                "lm-eval task YAMLs (as for `lm_eval --include_path`)"
            )
    return [d.resolve() for d in dirs]


def _data_dir(data_dir: str | Path | None) -> Path | None:
    if data_dir in (None, ""):
        return default_data_dir()
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise TaskNotAvailableError(
            f"task.data_dir={str(data_dir)!r} does not exist or is not a folder; expected a folder of "
            "<task>_<split>.jsonl or .parquet files (e.g. piqa_validation.jsonl)"
        )
    return path.resolve()


def _user_tasks(include_dirs: list[Path]) -> dict[str, Any]:
    """Task name -> lm-eval index entry for the user's YAMLs (single tasks only)."""
    if not include_dirs:
        return {}
    from lm_eval.tasks._index import Kind

    manager = TaskManager(include_path=[str(d) for d in include_dirs], include_defaults=False)
    return {
        name: entry
        for name, entry in manager.task_index.items()
        if entry.kind in (Kind.TASK, Kind.PY_TASK) and entry.yaml_path is not None
    }


def build_resolved(task: ResolvedTask, code_execution: bool = False) -> BuiltTask:
    """`build_task` for a resolved task, from where its data was found."""
    if task.source == "stdlib":
        raise ValueError(f"{task.name} is built from generated data by `evaluate`, not here")
    if task.source in ("datasets_cache", "data_dir"):
        datasets_offline()
    return build_task(task.name, task.config, task.include_dir, task.yaml, code_execution)


def _split_of(task) -> str | None:
    """The split a built lm-eval Task scores."""
    return scored_split(
        {"test_split": task.config.test_split, "validation_split": task.config.validation_split}
    )


def _dataset_fingerprint(task) -> str | None:
    """`datasets`' fingerprint of the scored split (for a cached hub dataset it follows its files)."""
    try:
        return str(task.dataset[_split_of(task)]._fingerprint)
    except (AttributeError, KeyError, TypeError):
        return None


def _columns(path: Path) -> list[str]:
    """The columns of a local JSONL or Parquet file (first row), for error messages."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        import json

        with path.open() as fh:
            return sorted(json.loads(fh.readline()))
    except Exception as err:  # unreadable: say so instead
        return [f"<unreadable: {type(err).__name__}: {err}>"]


def _three_ways(name: str, dataset: str, data_dir: Path | None, split: str | None) -> str:
    where = str(data_dir) if data_dir is not None else "DIR"
    split = split or "validation"
    return (
        f"Provide it one of three ways: (a) run it once with network (lm_eval, or "
        f"`datasets.load_dataset({', '.join(map(repr, dataset.split(', ')))})`) and copy the Hugging "
        "Face datasets cache here "
        f"(HF_HOME / HF_DATASETS_CACHE), then run offline (HF_DATASETS_OFFLINE=1); (b) put "
        f"{where}/{name}_{split}.jsonl (or .parquet) with the columns of {dataset} and pass "
        f"task.data_dir={where}; (c) write your own lm-eval task YAML and pass task.include_path=DIR."
    )


def _unknown(name: str, include_dirs: list[Path]) -> TaskNotAvailableError:
    close = difflib.get_close_matches(name, lm_eval_task_names(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if include_dirs:
        where = f"nor in task.include_path ({', '.join(map(str, include_dirs))})"
    else:
        where = "no task.include_path is set"
    return TaskNotAvailableError(
        f"unknown task {name!r}: lm-eval {lm_eval.__version__} has no task of that name (groups and "
        f"tags are not accepted: list their tasks), {where}, and it is not {STDLIB_TASK!r}.{hint} "
        f"Valid: any lm-eval task, e.g. {', '.join(PYTHIA_SUITE)}; this project's own "
        f"{', '.join(project_task_names())}; or {STDLIB_TASK}."
    )


def _with_skips(note: str, built: BuiltTask) -> dict[str, Any]:
    """The ResolvedTask fields that say which metrics were skipped, and why."""
    return {"note": "; ".join(filter(None, [note, built.note()])), "skipped_metrics": tuple(built.skipped)}


def _user_task(
    name: str, yaml_path: Path, include_dirs: list[Path], offline: bool, code_execution: bool
) -> ResolvedTask:
    """A task from the user's include_path, as registered there (built here when offline)."""
    folder = next(str(d) for d in include_dirs if yaml_path.resolve().is_relative_to(d))
    if not offline:
        return ResolvedTask(name, "include_path", yaml=str(yaml_path), include_dir=folder)
    try:
        built = build_task(name, None, folder, yaml_path, code_execution)
    except Exception as err:
        raise TaskNotAvailableError(
            f"task {name!r} from task.include_path={folder!r} ({yaml_path}) cannot be built offline: "
            f"{type(err).__name__}: {err}"
        ) from err
    check_documents(built.task, name, [str(yaml_path)])
    return ResolvedTask(
        name,
        "include_path",
        yaml=str(yaml_path),
        include_dir=folder,
        split=_split_of(built.task),
        data=_dataset_fingerprint(built.task),
        **_with_skips("", built),
    )


def _resolve_one(
    name: str,
    data_dir: Path | None,
    include_dirs: list[Path],
    user: dict[str, Any],
    offline: bool,
    code_execution: bool = False,
) -> ResolvedTask:
    if name == STDLIB_TASK:
        return ResolvedTask(name, "stdlib", note="generated from the held-out stdlib corpus")
    if name in user:
        return _user_task(name, Path(user[name].yaml_path), include_dirs, offline, code_execution)
    path = lm_eval_task_yaml(name)
    if path is None:
        raise _unknown(name, include_dirs)
    standard = {"include": str(path), "task": name}
    config = task_config(path)
    dataset = str(config.get("dataset_path"))
    if config.get("dataset_name"):
        dataset = f"{dataset}, {config['dataset_name']}"
    if not offline:
        return ResolvedTask(name, "hub", yaml=str(path), config=standard, split=scored_split(config))
    datasets_offline()
    try:
        cached = build_task(name, standard, code_execution=code_execution)
    except Exception as err:  # not in the datasets cache (ConnectionError, FileNotFoundError, ...)
        cache_miss = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        check_documents(cached.task, name, [f"{dataset} in the datasets cache"])
        return ResolvedTask(
            name,
            "datasets_cache",
            yaml=str(path),
            config=standard,
            split=scored_split(config),
            data=_dataset_fingerprint(cached.task),
            **_with_skips("", cached),
        )
    variant = local_variant(name, path, data_dir) if data_dir is not None else None
    if variant is not None and variant.missing_fewshot is not None:
        raise _no_fewshot_split(name, config, dataset, variant.missing_fewshot, data_dir)
    if variant is not None:
        file = variant.files[0]
        try:
            built = build_task(name, variant.config, code_execution=code_execution)
        except Exception as err:
            raise TaskNotAvailableError(
                f"task.data_dir={str(data_dir)!r}: {file.name} does not fit lm-eval's task {name!r} "
                f"({type(err).__name__}: {err}); the file has columns {_columns(file)}, and the task "
                f"({path}) reads the columns of the dataset {dataset}"
            ) from err
        check_documents(built.task, name, [str(f) for f in variant.files])
        (log.warning if variant.fallback else log.info)("task %s: %s", name, variant.note)
        return ResolvedTask(
            name,
            "data_dir",
            yaml=str(path),
            config=variant.config,
            files=tuple(str(f) for f in variant.files),
            split=variant.split,
            fallback=variant.fallback,
            **_with_skips(variant.note, built),
        )
    raise _not_available(name, dataset, config, cache_miss, data_dir, include_dirs)


def _no_fewshot_split(
    name: str, config: dict, dataset: str, split: str, data_dir: Path | None
) -> TaskNotAvailableError:
    shots = config.get("num_fewshot")
    return TaskNotAvailableError(
        f"task {name!r} is {shots}-shot: lm-eval draws its examples from the {split!r} split of {dataset}, "
        f"and task.data_dir={str(data_dir)!r} has no {name}_{split}.jsonl (or .parquet). Add that file "
        f"(rows in the columns of {dataset}) or the dataset to the datasets cache. No examples are drawn "
        "from the scored split in its place: a document could be shown its own answer."
    )


def _not_available(
    name: str, dataset: str, config: dict, cache_miss: str, data_dir: Path | None, include_dirs: list[Path]
) -> TaskNotAvailableError:
    import datasets

    scored = scored_split(config)
    splits = dict.fromkeys([scored or "validation", "validation"])
    looked = [p.name for s in splits for p in candidate_files(name, data_dir or Path("DIR"), s)]
    if data_dir is not None:
        local = f"task.data_dir={str(data_dir)!r} has none of {', '.join(looked)}"
    else:
        local = "no task.data_dir is set (and ../shared/data/eval is absent)"
    if include_dirs:
        user = f"task.include_path ({', '.join(map(str, include_dirs))}) registers no task of that name"
    else:
        user = "no task.include_path is set"
    return TaskNotAvailableError(
        f"task {name!r} cannot be run offline: the Hugging Face datasets cache "
        f"({datasets.config.HF_DATASETS_CACHE}) has no copy of {dataset} ({cache_miss}); {local}; {user}. "
        + _three_ways(name, dataset, data_dir, scored)
    )


_memo: dict[tuple, tuple[tuple, list[ResolvedTask]]] = {}


def _signature(data_dir: Path | None, include_dirs: list[Path]) -> tuple:
    """Names, sizes and mtimes of the files a resolution read (the data folder's own files, the
    include folders' trees): a resolution is reused until one of them changes."""
    files = [p for p in data_dir.iterdir() if p.is_file()] if data_dir is not None else []
    files += [p for d in include_dirs for p in d.rglob("*") if p.is_file()]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files))


def resolve_tasks(
    names: Sequence[str] | str,
    data_dir: str | Path | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    offline: bool | None = None,
    confirm_run_unsafe_code: bool = False,
) -> list[ResolvedTask]:
    """Resolve every task before anything expensive runs; raises TaskNotAvailableError (a ValueError).

    ``offline=None`` means offline when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE says so, or when the
    hub does not answer a single short probe. Results are reused within a process while the
    data and include folders are unchanged. ``confirm_run_unsafe_code`` (with
    ``HF_ALLOW_CODE_EVAL=1``) lets a task that executes model-written code (humaneval) keep its metric.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise TaskNotAvailableError(f"no tasks given; e.g. {', '.join(PYTHIA_SUITE)}, or {STDLIB_TASK}")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise TaskNotAvailableError(f"task.names holds {bad!r}; each must be a task name")
    import datasets

    include_dirs = _include_dirs(include_path)
    folder = _data_dir(data_dir)
    user = _user_tasks(include_dirs)
    for name in names:  # a typo fails at once, before the hub is probed or anything is built
        if name != STDLIB_TASK and name not in user and lm_eval_task_yaml(name) is None:
            raise _unknown(name, include_dirs)
    needs_data = any(n != STDLIB_TASK for n in names)
    mode = is_offline(offline) if needs_data else True
    code = code_execution_allowed(confirm_run_unsafe_code)
    key = (
        tuple(names),
        str(folder),
        tuple(map(str, include_dirs)),
        mode,
        str(datasets.config.HF_DATASETS_CACHE),
        code,
    )
    signature = _signature(folder, include_dirs) if needs_data else ()
    cached = _memo.get(key)
    if cached is not None and cached[0] == signature:
        return list(cached[1])
    resolved = [_resolve_one(n, folder, include_dirs, user, mode, code) for n in dict.fromkeys(names)]
    _memo[key] = (signature, resolved)
    return list(resolved)


def validate_tasks(names: Sequence[str] | str, **kwargs: Any) -> list[ResolvedTask]:
    """`resolve_tasks`, named for what the runner uses it for: failing before any model loads."""
    return resolve_tasks(names, **kwargs)


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def task_identity(tasks: Sequence[ResolvedTask], cache_dir: str | Path | None = None) -> list[dict]:
    """What each task's scores depend on, for the accuracy cache key: the task YAML's content,
    the source, the scored split and the data's content (file hashes, or the dataset fingerprint),
    never a file name alone."""
    out = []
    for task in tasks:
        item: dict[str, Any] = {"name": task.name, "source": task.source, "split": task.split}
        if task.yaml:
            item["yaml"] = _sha256(task.yaml)
        if task.source == "stdlib":
            config = _stdlib_config(cache_dir)
            item["data"] = _sha256(config["dataset_kwargs"]["data_files"]["test"])
        elif task.files:
            item["data"] = [_sha256(f) for f in task.files]
        elif task.data:
            item["data"] = task.data
        out.append(item)
    return out


def _stdlib_config(cache_dir: str | Path | None) -> dict[str, Any]:
    lambada = lm_eval_task_yaml("lambada_openai")
    if lambada is None:
        raise RuntimeError(f"lm-eval {lm_eval.__version__} has no lambada_openai task to borrow metrics from")
    cache = Path(cache_dir) / "eval" if cache_dir is not None else default_cache_dir()
    return stdlib_task_config(cache, lambada)


def evaluate(
    lm: lm_eval.api.model.LM,
    tasks: Sequence[ResolvedTask] | Sequence[str] | str,
    limit: int | None = None,
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
) -> dict[str, dict[str, float]]:
    """Run lm-eval tasks (zero-shot) on ``lm``; returns ``{task: {metric: value}}`` as plain floats.

    ``tasks`` are names (resolved here; errors name the task and how to provide it) or the
    output of `resolve_tasks`. ``cache_dir`` is the run's cache (``stdlib_lambada`` data lives
    in its ``eval/``).
    """
    if isinstance(tasks, str) or not all(isinstance(t, ResolvedTask) for t in tasks):
        tasks = resolve_tasks(tasks, data_dir=data_dir, include_path=include_path, offline=offline)  # type: ignore[arg-type]
    resolved: list[ResolvedTask] = list(tasks)  # type: ignore[arg-type]
    if any(t.source in ("datasets_cache", "data_dir") for t in resolved):
        datasets_offline()
    names = [t.name for t in resolved]
    for task in resolved:
        if task.fallback:
            log.warning("task %s: %s", task.name, task.note)
    with tempfile.TemporaryDirectory(prefix="earlyexit-tasks-") as include_dir:
        for task in resolved:
            config = _stdlib_config(cache_dir) if task.source == "stdlib" else task.config
            if config is not None:
                Path(include_dir, f"{task.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        user = list(dict.fromkeys(t.include_dir for t in resolved if t.include_dir))
        manager = TaskManager(include_path=[*user, include_dir], include_defaults=False)
        missing = [n for n in names if n not in manager.all_tasks]
        if missing:
            raise RuntimeError(f"lm-eval did not register task(s) {missing} (a task config failed to parse)")
        with scoring_warnings(names):  # a task that warned of bad targets is never scored as ok
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                limit=limit,
                bootstrap_iters=0,  # lm-eval's bootstrap spawns a process pool; stderrs come from samples
                log_samples=True,
            )
    samples = out.get("samples") or {}
    return {
        task: {**_plain_metrics(values), **_sample_stderrs(samples.get(task) or [])}
        for task, values in out["results"].items()
        if task in names
    }


# Per-document values of these are log-likelihoods aggregated by exp/log formulas, not means.
NOT_MEANS = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}


def _sample_stderrs(samples: Sequence[dict]) -> dict[str, float]:
    """Standard error of the mean of each per-document numeric metric (acc, exact_match, ...):
    sample standard deviation / sqrt(n), the formula lm-eval's ``mean_stderr`` uses. Metrics whose
    per-document values are not numbers (perplexity's pairs) get none."""
    values: dict[str, list[float]] = {}
    for sample in samples:
        filt = sample.get("filter", "none")
        for key in sample.get("metrics") or []:  # the metric names lm-eval scored this document with
            value = sample.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or key in NOT_MEANS:
                continue
            name = key if filt == "none" else f"{key},{filt}"
            values.setdefault(name, []).append(float(value))
    out = {}
    for name, xs in values.items():
        if len(xs) > 1:
            mean = sum(xs) / len(xs)
            var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
            out[f"{name}_stderr"] = math.sqrt(var / len(xs))
    return out


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
