"""Any lm-eval ``generate_until`` task as a `Workload`: its own prompts, stops, budgets and scorer.

Published early-exit speedups are measured on generation tasks with quality scored on the same
outputs, so a task is turned into the prompts the harness times, built by lm-eval itself
(``build_all_requests``: the task's few-shot examples, ``description``, delimiters), and a scorer
that hands the timed texts back to lm-eval (its filters, then ``process_results`` per document,
then its aggregations): a quality here equals what lm-eval reports for the same outputs. Tasks
are resolved exactly as ``task.names`` are (`lm_eval_tasks.resolve_tasks`: hub, datasets cache,
``task.data_dir``, ``task.include_path``, and this project's ``task_yaml/``); metrics that cannot
run here are skipped, with the reason in the workload's note (`lm_eval_tasks.build_task`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.metrics import mean as lm_eval_mean
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

from earlyexit.decoding.stops import Stop
from earlyexit.tasks.lm_eval_tasks import (
    CODE_EXECUTION_OFF,
    BuiltTask,
    ResolvedTask,
    build_resolved,
    code_execution_allowed,
    score_generations,
)
from earlyexit.tasks.local_tasks import task_config
from earlyexit.tasks.workload import Scorer, Workload, WorkloadPrompt

__all__ = ["DEFAULT_MAX_GEN_TOKS", "DOMAINS", "lm_eval_workload", "task_domain"]

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own budget when a task sets none (normalize_gen_kwargs)

# What text a task is (the embedded model knows Python, not English): task name or name prefix.
DOMAINS = {
    "nq_open": "English questions",
    "triviaqa": "English questions",
    "squad": "English questions",
    "coqa": "English questions",
    "drop": "English questions",
    "humaneval": "Python code",
    "mbpp": "Python code",
    "cnn_dm": "news articles",
    "cnn_dailymail": "news articles",
    "xsum": "news articles",
    "gsm8k": "math word problems",
    "minerva_math": "math problems",
}
GENERIC_DOMAIN = "text"


def task_domain(name: str) -> str:
    """A short phrase for what a task's text is: the longest matching name prefix, else generic."""
    hits = [prefix for prefix in DOMAINS if name == prefix or name.startswith(prefix)]
    return DOMAINS[max(hits, key=len)] if hits else GENERIC_DOMAIN


def _output_type(task: ResolvedTask) -> str:
    """The task's lm-eval output type, read from its YAML without building it."""
    if task.source == "stdlib":
        return "loglikelihood"
    if task.yaml is None:
        return "generate_until"
    return str(task_config(Path(task.yaml)).get("output_type", "generate_until"))


def _refuse_non_generation(task: ResolvedTask) -> None:
    kind = _output_type(task)
    if kind != "generate_until":
        raise ValueError(
            f"task {task.name!r} has output type {kind!r}: it generates nothing, and log-likelihood "
            "tasks show no speedup from a decoding mode (an exit only changes which token is scored). "
            f"Score it with task.names=[{task.name}] (lm-eval accuracy with exits); time a generate_until "
            "task instead (e.g. nq_open, gsm8k, humaneval, cnn_dm_layerskip, xsum_layerskip)."
        )


def _eos_text(tokenizer: Any) -> str | None:
    """The EOS token's text, which lm-eval adds to every task's ``until``."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return None if eos is None else tokenizer.decode([eos])


def _prompt(
    instance: Any, tokenizer: Any, max_length: int, eos: str | None, gen_cap: int | None = None
) -> tuple[WorkloadPrompt, bool]:
    """One lm-eval request as lm-eval's HF model would run it: the context's tokens cut from the
    left to ``max_length - max_gen_toks``, the task's ``until`` plus EOS as stops. Returns the
    prompt and whether it was cut. ``gen_cap`` caps the task's budget first (a CPU run of
    humaneval's 1024 tokens would leave no room for its prompt in a 1024-token context)."""
    context, gen_kwargs = instance.args[0], instance.args[1]
    kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), DEFAULT_MAX_GEN_TOKS)
    until = handle_stop_sequences(list(kwargs.get("until") or []), eos)
    max_gen = int(kwargs["max_gen_toks"])
    if gen_cap is not None:
        max_gen = min(max_gen, gen_cap)
    room = max_length - max_gen
    if room < 1:
        raise ValueError(
            f"task {instance.task_name!r}: max_gen_toks={max_gen} leaves no room for a prompt in "
            f"max_length={max_length}"
        )
    ids = list(tokenizer(context).input_ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    kept = ids[-room:] or [bos if bos is not None else tokenizer.eos_token_id]  # lm-eval's prefix token
    prompt = WorkloadPrompt(
        tuple(kept), max_gen, Stop(strings=tuple(until)), reference=(instance.doc, instance)
    )
    return prompt, len(ids) > room


def _scorer(lm_task: Any) -> Scorer:
    """Texts -> lm-eval's own per-document scores (``"metric,filter"`` keys)."""

    def score(texts: Sequence[str], prompts: Sequence[WorkloadPrompt]) -> dict[str, list[float]]:
        return score_generations(lm_task, [p.reference[1] for p in prompts], texts)

    return score


def _note(
    task: ResolvedTask, built: BuiltTask, lm_task: Any, cut: int, total: int, gen_cap: int | None = None
) -> str:
    """What a reader of this workload's numbers must know: its data, shots, skips, truncation."""
    shots = lm_task.get_config("num_fewshot") or 0
    parts = [task.note] if task.note else []
    if built.skipped and built.note() not in task.note:
        parts.append(built.note())
    if not built.metrics and not any(CODE_EXECUTION_OFF in why for why in built.skipped.values()):
        parts.append("no quality metric can run here: speed and acceptance only")
    if shots:
        config = lm_task.config  # lm-eval's rule without a fewshot split: train, else validation, else test
        split = lm_task.fewshot_cfg.split or config.training_split or config.validation_split or "test"
        parts.append(f"{shots}-shot, examples from the {split} split")
    if cut:
        parts.append(f"{cut} of {total} prompts cut from the left to fit max_length - max_gen_toks")
    if gen_cap is not None:
        parts.append(f"max new tokens capped at {gen_cap} (bench.gen_cap)")
    repeats = lm_task.get_config("repeats") or 1
    if repeats > 1:
        parts.append(f"lm-eval samples {repeats} generations per prompt; one is scored here")
    return "; ".join(parts)


def lm_eval_workload(
    task: ResolvedTask,
    tokenizer: Any,
    limit: int | None,
    max_length: int,
    seed: int = 0,
    *,
    confirm_run_unsafe_code: bool = False,
    gen_cap: int | None = None,
) -> Workload:
    """The first ``limit`` documents of an lm-eval ``generate_until`` task as a workload.

    The prompts are lm-eval's requests (``build_all_requests``; few-shot examples drawn with
    ``seed`` as lm-eval's ``fewshot_random_seed``, whose own default is 1234; the LayerSkip tasks'
    fixed shot does not depend on it), token ids from ``tokenizer`` cut from the left to
    ``max_length - max_gen_toks``; each prompt's budget is the task's ``max_gen_toks`` (lm-eval's
    default 256) and its stops the task's ``until`` plus the EOS text. Scores are lm-eval's for the
    same texts. A log-likelihood task raises ValueError: it has no generation to time.
    ``confirm_run_unsafe_code`` (with ``HF_ALLOW_CODE_EVAL=1``) lets humaneval keep its metric.
    ``gen_cap`` caps every prompt's budget (``bench.gen_cap``), said in the note.
    """
    _refuse_non_generation(task)
    built = build_resolved(task, code_execution_allowed(confirm_run_unsafe_code))
    lm_task = built.task
    if lm_task.get_config("num_fewshot") is None:  # as lm-eval's simple_evaluate
        lm_task.set_config(key="num_fewshot", value=0)
    lm_task.set_fewshot_seed(seed=seed)
    lm_task.build_all_requests(limit=limit, rank=0, world_size=1)
    eos = _eos_text(tokenizer)
    made = [_prompt(inst, tokenizer, max_length, eos, gen_cap) for inst in lm_task.instances]
    prompts = [p for p, _ in made]
    metrics = built.metrics
    aggregation, better = lm_task.aggregation(), lm_task.higher_is_better()
    base = {m: m.split(",", 1)[0] for m in metrics}
    return Workload(
        name=task.name,
        prompts=prompts,
        domain=task_domain(task.name),
        source=task.source,
        metrics=metrics,
        scorer=_scorer(lm_task) if metrics else None,
        aggregations={m: aggregation.get(base[m]) or lm_eval_mean for m in metrics},
        higher_is_better={m: bool(better[base[m]]) for m in metrics if better.get(base[m]) is not None},
        note=_note(task, built, lm_task, sum(cut for _, cut in made), len(made), gen_cap),
    )
