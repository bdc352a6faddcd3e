"""Building an lm-eval Task here: lm-eval's own build, and for a ``generate_until`` task the metrics
that cannot run on this machine skipped instead of failing the task.

A task built offline only to time its generations must not fail on its scorer: a metric whose
code cannot be imported or loaded offline (humaneval's ``code_eval``, a hub-only HF ``evaluate``
metric such as BERTScore) or that raises on a probe document is dropped, with a warning saying
why; every metric of a task that executes model-written code is dropped unless the user opted in
(``HF_ALLOW_CODE_EVAL=1`` and ``confirm_run_unsafe_code``, as lm-eval asks). `score_generations`
scores texts with lm-eval's own filters and ``process_results``, so a quality equals lm-eval's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lm_eval.tasks import TaskManager

from earlyexit.tasks.local_tasks import FunctionRef, load_config_lazy, task_config

log = logging.getLogger(__name__)

__all__ = ["CODE_EXECUTION_OFF", "BuiltTask", "build_task", "code_execution_allowed", "score_generations"]

CODE_EXECUTION_OFF = (
    "code execution not enabled (HF_ALLOW_CODE_EVAL=1 and task.confirm_run_unsafe_code=true enable it, "
    "as lm-eval asks): speed and acceptance only"
)


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
