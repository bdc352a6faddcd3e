"""Workloads by name (``bench.workloads``): checked before any model loads, built after.

- ``heldout``: seeded windows of the held-out training text continued for a fixed number of
  tokens (the cheap default; no quality score: there is nothing to be right about);
- ``stdlib_completion``: held-out standard-library functions completed to their end
  (`stdlib_completion`), the embedded model's own task, scored by exact match and similarity;
- any lm-eval ``generate_until`` task, resolved like ``task.names`` (hub, datasets cache,
  ``task.data_dir``, ``task.include_path``; this project's summarisation YAMLs too), with its
  own prompts, few-shot examples, stops and metrics (`generation_tasks`).

A log-likelihood task is refused here: no generation runs on it, so it has no speed to time.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Sequence
from typing import Any

import torch

from earlyexit.data.streams import seeded_windows
from earlyexit.tasks.workload import Workload, WorkloadPrompt

log = logging.getLogger(__name__)

__all__ = ["BUILTIN_WORKLOADS", "WorkloadError", "build_workloads", "check_workloads", "heldout_workload"]

BUILTIN_WORKLOADS = ("heldout", "stdlib_completion")


class WorkloadError(ValueError):
    """An unknown workload, or one that cannot run here; the message says what would."""


def heldout_workload(
    stream: torch.Tensor, n: int, prompt_len: int, max_new_tokens: int, seed: int, domain: str
) -> Workload:
    """Today's held-out benchmark as a workload: fixed-length continuations, no stops, no score."""
    prompts = [
        WorkloadPrompt(tuple(int(t) for t in w), max_new_tokens)
        for w in seeded_windows(stream, n, prompt_len, seed)
    ]
    note = "held-out training text, fixed-length continuations; no quality score"
    return Workload("heldout", prompts, domain, "heldout", note=note, stop_at_eos=False)


def _task_kwargs(task: dict[str, Any] | None) -> dict[str, Any]:
    task = dict(task or {})
    kwargs = {k: task.get(k) for k in ("data_dir", "include_path", "offline")}
    kwargs["confirm_run_unsafe_code"] = bool(task.get("confirm_run_unsafe_code", False))
    return kwargs


def _output_type(resolved) -> str | None:
    from earlyexit.tasks.local_tasks import task_config

    return task_config(resolved.yaml).get("output_type") if resolved.yaml else None


def check_workloads(names: Sequence[str], task: dict[str, Any] | None = None) -> list:
    """Fail before any model loads: unknown names list the valid ones; a generation task must
    resolve (offline too) and be a ``generate_until`` task. Returns the resolved lm-eval tasks."""
    names = list(names)
    if not names:
        raise WorkloadError(f"bench.workloads is empty; e.g. {', '.join(BUILTIN_WORKLOADS)} or nq_open")
    if len(set(names)) != len(names):
        raise WorkloadError(f"bench.workloads={names} names a workload twice")
    others = [n for n in names if n not in BUILTIN_WORKLOADS]
    if not others:
        return []
    from earlyexit.tasks.lm_eval_tasks import TaskNotAvailableError, resolve_tasks

    try:
        resolved = resolve_tasks(others, **_task_kwargs(task))
    except TaskNotAvailableError as err:
        if str(err).startswith("unknown task"):
            close = difflib.get_close_matches(others[0], BUILTIN_WORKLOADS, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise WorkloadError(
                f"unknown workload: {err} Valid workloads: {', '.join(BUILTIN_WORKLOADS)}, or any lm-eval "
                "generate_until task (e.g. nq_open, gsm8k, humaneval, cnn_dm_layerskip, xsum_layerskip)."
                + hint
            ) from None
        raise
    for r in resolved:
        kind = _output_type(r)
        if kind is not None and kind != "generate_until":
            raise WorkloadError(
                f"workload {r.name!r} is a {kind} task: it generates nothing, so there is no speed to time "
                f"(an exit only changes which token is scored). Score it with task.names=[{r.name}]; time "
                f"generation tasks (nq_open, gsm8k, humaneval, cnn_dm_layerskip, xsum_layerskip, "
                f"{', '.join(BUILTIN_WORKLOADS)})."
            )
    return resolved


def _capped(workload: Workload, cap: int | None) -> Workload:
    """Generation tasks' own budgets (e.g. 256 tokens) capped for a CPU run, said in the note."""
    if cap is None or all(p.max_new_tokens <= cap for p in workload.prompts):
        return workload
    prompts = [dataclasses.replace(p, max_new_tokens=min(p.max_new_tokens, cap)) for p in workload.prompts]
    note = "; ".join(filter(None, [workload.note, f"max new tokens capped at {cap} (bench.gen_cap)"]))
    return dataclasses.replace(workload, prompts=prompts, note=note)


def build_workloads(
    names: Sequence[str],
    tokenizer,
    heldout: torch.Tensor,
    limit: int,
    prompt_len: int,
    max_new_tokens: int,
    max_length: int,
    seed: int = 0,
    heldout_domain: str = "held-out training text",
    context_tokens: int = 128,
    gen_cap: int | None = None,
    task: dict[str, Any] | None = None,
) -> list[Workload]:
    """Every named workload, in order, ``limit`` prompts each (all a task has when it has fewer)."""
    resolved = {r.name: r for r in check_workloads(names, task)}
    out = []
    for name in names:
        if name == "heldout":
            wl = heldout_workload(heldout, limit, prompt_len, max_new_tokens, seed, heldout_domain)
        elif name == "stdlib_completion":
            from earlyexit.tasks.stdlib_completion import stdlib_completion_workload

            wl = stdlib_completion_workload(tokenizer, limit, context_tokens, max_new_tokens, seed)
        else:
            from earlyexit.tasks.generation_tasks import lm_eval_workload

            unsafe = _task_kwargs(task)["confirm_run_unsafe_code"]
            wl = lm_eval_workload(
                resolved[name],
                tokenizer,
                limit,
                max_length,
                seed,
                confirm_run_unsafe_code=unsafe,
                gen_cap=gen_cap,
            )
        if len(wl.prompts) < limit:
            log.warning(
                "workload %s has %d prompts, fewer than bench.limit=%d: all kept",
                name,
                len(wl.prompts),
                limit,
            )
        out.append(_capped(wl, gen_cap))
    return out
