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

import dataclasses
import difflib
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lm_eval
import yaml
from lm_eval.tasks import TaskManager

from earlyexit.tasks.local_tasks import (
    FunctionRef,
    candidate_files,
    lm_eval_task_names,
    lm_eval_task_yaml,
    load_config_lazy,
    local_variant,
    project_task_names,
    scored_split,
    task_config,
)
from earlyexit.tasks.offline import datasets_offline, is_offline
from earlyexit.tasks.stdlib_task import STDLIB_TASK, stdlib_task_config
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
CODE_EXECUTION_OFF = (
    "code execution not enabled (HF_ALLOW_CODE_EVAL=1 and confirm_run_unsafe_code=True enable it, as "
    "lm-eval asks): speed and acceptance only"
)


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


def _build(name: str, config: dict | None, include_dir: str | None = None):
    """lm-eval's own Task object for ``name``: loads its data and tests one document."""
    with tempfile.TemporaryDirectory(prefix="earlyexit-task-") as tmp:
        paths = [include_dir] if include_dir else []
        if config is not None:
            Path(tmp, f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            paths.append(tmp)
        manager = TaskManager(include_path=paths, include_defaults=False)
        return manager.load([name])["tasks"][name]


def code_execution_allowed(confirm_run_unsafe_code: bool = False) -> bool:
    """Whether a task may execute model-written code: only on the user's explicit opt-in, both
    lm-eval's ``confirm_run_unsafe_code`` and HF evaluate's own ``HF_ALLOW_CODE_EVAL=1``."""
    return bool(confirm_run_unsafe_code) and os.environ.get("HF_ALLOW_CODE_EVAL", "") == "1"


@dataclass
class BuiltTask:
    """An lm-eval Task as built here: the metrics it scores (``"metric,filter"`` keys, as lm-eval's
    results name them; generation tasks only) and the ones skipped, with why."""

    task: Any
    metrics: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)

    def note(self) -> str:
        return "; ".join(f"metric {m} skipped: {why}" for m, why in self.skipped.items())


@contextmanager
def _task_file(name: str, config: dict | None, yaml_path: str | Path | None) -> Iterator[Path]:
    """The YAML lm-eval would load for the task: ``config`` written out, or the user's own file."""
    if config is None:
        if yaml_path is None:
            raise ValueError(f"task {name!r}: neither a config nor a YAML to build it from")
        yield Path(yaml_path)
        return
    with tempfile.TemporaryDirectory(prefix="earlyexit-task-") as tmp:
        path = Path(tmp, f"{name}.yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        yield path


def _why(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _metric_name(entry: dict) -> str:
    metric = entry.get("metric")
    return metric.name if isinstance(metric, FunctionRef) else str(metric)


def _resolve_refs(value: Any) -> Any:
    """Every `FunctionRef` in a config value imported (a failure propagates)."""
    if isinstance(value, FunctionRef):
        return value.resolve()
    if isinstance(value, dict):
        return {k: _resolve_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v) for v in value]
    return value


def _loadable_metrics(entries: list | None, skipped: dict[str, str]) -> list | None:
    """The metric_list entries whose functions import; the others go to ``skipped``."""
    if entries is None:
        return None
    kept = []
    for entry in entries:
        try:
            kept.append(_resolve_refs(entry))
        except Exception as err:  # its module cannot load here (e.g. a metric fetched from the hub)
            skipped[_metric_name(entry)] = f"its code cannot be loaded here ({_why(err)})"
    return kept


def _loadable_filters(cfg: dict, skipped: dict[str, str]) -> list | None:
    """The filter pipelines whose functions import. A metric is computed on every pipeline's output,
    so a pipeline that cannot load drops its ``metric,filter`` results, and with no pipeline left
    every metric goes (lm-eval never scores the unfiltered text of a filtered task)."""
    pipelines = cfg.get("filter_list")
    if not pipelines:
        return pipelines
    kept, lost = [], {}
    for pipeline in pipelines:
        try:
            kept.append(_resolve_refs(pipeline))
        except Exception as err:
            lost[str(pipeline.get("name"))] = _why(err)
    metrics = [_metric_name(e) for e in cfg.get("metric_list") or []]
    for name, why in lost.items():
        for metric in metrics if kept else []:
            skipped[f"{metric},{name}"] = f"its filter {name!r} cannot be loaded here ({why})"
    if not kept:
        why = "; ".join(f"{n}: {w}" for n, w in lost.items())
        skipped.update({m: f"its filters cannot be loaded here ({why})" for m in metrics})
        cfg["metric_list"] = []
        return None
    return kept


def _build_lazy(path: Path, code_execution: bool, skipped: dict[str, str]) -> Any:
    """The task built from its YAML with each ``!function`` imported one by one, so a metric (or
    filter) whose code cannot load is skipped instead of failing the task. Mirrors lm-eval's
    TaskFactory for a single YAML task."""
    from lm_eval.api.task import ConfigurableTask

    cfg = load_config_lazy(path)
    if "class" in cfg:
        raise ValueError(f"{path}: a Python task class, built only by lm-eval itself")
    if cfg.get("unsafe_code") and not code_execution:  # its metric code is never even imported
        skipped.update({_metric_name(e): CODE_EXECUTION_OFF for e in cfg.get("metric_list") or []})
        cfg["metric_list"], cfg["filter_list"], cfg["process_results"] = [], None, None
    cfg["metric_list"] = _loadable_metrics(cfg.get("metric_list"), skipped)
    cfg["filter_list"] = _loadable_filters(cfg, skipped)
    cfg = _resolve_refs(cfg)  # prompts, process_docs, ...: a failure here is the task's own
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    meta = cfg.get("metadata", {})
    cfg["metadata"] = {
        **(meta if isinstance(meta, dict) else {"_metadata": meta}),
        "config_source": str(path),
    }
    return ConfigurableTask(config=cfg)


def _drop_metric(task: Any, metric: str) -> None:
    for table in (
        task._metric_fn_list,
        task._metric_fn_kwargs,
        task._aggregation_list,
        task._higher_is_better,
    ):
        table.pop(metric, None)


def _unloaded_metrics(task: Any) -> dict[str, str]:
    """Metrics lm-eval registered as None: a name neither in its registry nor loadable from HF
    ``evaluate`` here (offline, a hub metric loads only from the local evaluate cache)."""
    if task.config.process_results is not None:  # its own function computes every metric
        return {}
    return {
        m: "lm-eval could not load it (not in its registry, and HF evaluate cannot load it here)"
        for m, fn in task._metric_fn_list.items()
        if fn is None
    }


def score_generations(task: Any, instances: Sequence[Any], texts: Sequence[str]) -> dict[str, list]:
    """lm-eval's own scoring of generated texts, as its evaluator does it: each text is the response
    of its request (``Instance``), the task's filters run (``apply_filters``), then its
    ``process_results`` per document for every filter. Keys are ``"metric,filter"``, as in
    lm-eval's results; the instances themselves are left untouched."""
    scored = [
        dataclasses.replace(inst, resps=[text], filtered_resps={})
        for inst, text in zip(instances, texts, strict=True)
    ]
    saved = task.__dict__.get("_instances")
    task._instances = scored
    try:
        task.apply_filters()
    finally:
        task._instances = saved
    out: dict[str, list] = {}
    for filter_key in scored[0].filtered_resps if scored else ():
        for inst in scored:
            for metric, value in task.process_results(inst.doc, [inst.filtered_resps[filter_key]]).items():
                out.setdefault(f"{metric},{filter_key}", []).append(value)
    return out


def _probe_text(task: Any, doc: Any) -> str:
    """A plausible output for the probe: the document's own (first) target."""
    target = task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0] if target else ""
    if isinstance(target, int) and task.config.doc_to_choice is not None:
        target = task.doc_to_choice(doc)[target]
    return str(target)


def _probe(task: Any) -> tuple[dict[str, list], dict[str, str]]:
    """Score the first document's target as if generated, so a metric that fails only when it
    computes (a model it downloads, a package it lacks) is found before anything is timed.
    Returns the scores and the metrics that failed, with why."""
    doc = task.eval_docs[0]
    request = task.construct_requests(doc=doc, ctx="", metadata=(task.config.task, 0, 1))
    request, text = (request[0] if isinstance(request, list) else request), [_probe_text(task, doc)]
    try:
        return score_generations(task, [request], text), {}
    except Exception as err:
        whole = f"it fails on a probe document ({_why(err)})"
    if callable(task.config.process_results):  # one function computes them all: all go
        return {}, dict.fromkeys(task._metric_fn_list, whole)
    failed, metrics = {}, dict(task._metric_fn_list)
    for metric, fn in metrics.items():
        task._metric_fn_list = {metric: fn}
        try:
            score_generations(task, [request], text)
        except Exception as err:
            failed[metric] = f"it fails on a probe document ({_why(err)})"
    task._metric_fn_list = {m: fn for m, fn in metrics.items() if m not in failed}
    return score_generations(task, [request], text), failed


def _metric_check(task: Any, skipped: dict[str, str]) -> tuple[str, ...]:
    """Drop what cannot run (``skipped`` gets each with why); the ``metric,filter`` keys that remain."""
    unloaded = _unloaded_metrics(task)
    for metric in unloaded:
        _drop_metric(task, metric)
    skipped.update(unloaded)
    if not task._metric_fn_list and task.config.process_results is None:
        return ()
    scores, failed = _probe(task)
    for metric in failed:
        _drop_metric(task, metric)
    skipped.update(failed)
    if callable(task.config.process_results):  # declared, but its function gave nothing for it
        given = {key.split(",", 1)[0] for key in scores}
        for metric in [m for m in task._metric_fn_list if m not in given]:
            _drop_metric(task, metric)
            skipped[metric] = (
                "the task's process_results gave no value for it (a package it needs is missing?)"
            )
        scores = {k: v for k, v in scores.items() if k.split(",", 1)[0] in task._metric_fn_list}
    return tuple(scores)


def _build_skipping(
    name: str, config: dict | None, include_dir: str | None, path: Path, code_execution: bool, skipped: dict
) -> Any:
    """`_build`, and where it fails, the task again with each metric's code loaded on its own."""
    try:
        return _build(name, config, include_dir)
    except Exception as err:
        try:
            task = _build_lazy(path, code_execution, skipped)
        except Exception as again:
            # With a metric skipped, what still fails is the task's own problem (its data, say).
            raise (again if skipped else err) from None
        if not skipped:  # not a metric's failure: lm-eval's own error stands
            raise
        return task


def build_task(
    name: str,
    config: dict | None,
    include_dir: str | None = None,
    yaml_path: str | Path | None = None,
    code_execution: bool = False,
) -> BuiltTask:
    """lm-eval's Task for ``name``, as `_build` makes it; for a ``generate_until`` task, with the
    metrics that cannot run here skipped (warned about, with why) rather than failing the task:
    a task that is built offline only to time its generations must not fail on its scorer.

    A task that executes model-written code (``unsafe_code``) keeps its metrics only with
    ``code_execution`` (see `code_execution_allowed`); without it, its metric code is never imported.
    """
    with _task_file(name, config, yaml_path) as path:
        raw = task_config(path)
        if raw.get("output_type", "generate_until") != "generate_until":
            return BuiltTask(_build(name, config, include_dir))
        skipped: dict[str, str] = {}
        if raw.get("unsafe_code") and not code_execution:
            task = _build_lazy(path, code_execution, skipped)
        else:
            task = _build_skipping(name, config, include_dir, path, code_execution, skipped)
        metrics = _metric_check(task, skipped)
    for metric, why in skipped.items():
        log.warning("task %s: metric %s skipped: %s", name, metric, why)
    return BuiltTask(task, metrics, skipped)


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
