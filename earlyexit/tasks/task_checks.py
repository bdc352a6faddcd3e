"""Does a task's data produce valid prompts and targets? Checked before any model loads.

lm-eval renders a prompt field that names a missing column as the literal template text (so a
file in google/boolq's columns scores every document against the target ``"label"``), and it
only logs a warning per document when a label is out of range: a run on the wrong file ends
with a plausible-looking accuracy of 0. So the first documents of every task built here go
through its own ``doc_to_text``, ``doc_to_target`` and ``doc_to_choice``; missing fields,
out-of-range labels and lm-eval warnings there stop the run, naming the task, the file, the
fields expected and the fields found. After scoring, `ScoringWarnings` catches the same
warnings raised on documents past the first few.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "BAD_DATA_WARNINGS",
    "TaskDataError",
    "check_documents",
    "expected_fields",
    "scoring_warnings",
]

# lm-eval warnings that mean a document produced a wrong target or prompt (lm-eval 0.4.x texts).
BAD_DATA_WARNINGS = (
    "Label index was not in within range",
    "Applied prompt returns empty string",
    "doc_to_choice was called but not set",
)
PROMPT_FIELDS = ("doc_to_text", "doc_to_target", "doc_to_choice")
CHECKED_DOCS = 5


class TaskDataError(ValueError):
    """A task's documents do not produce valid prompts or targets; the message says which and why."""


def _template_fields(template: str) -> set[str]:
    """Top-level variables a Jinja template reads (lm-eval renders prompt fields with Jinja)."""
    from jinja2 import meta
    from lm_eval.utils import env

    try:
        return set(meta.find_undeclared_variables(env.parse(template)))
    except Exception:  # not a template lm-eval could render either: doc_to_* will say so
        return set()


def expected_fields(task: Any) -> dict[str, set[str]]:
    """Prompt field -> the document fields it reads (a column name, or a template's variables).

    Functions (``!function``) read what they like: they are checked by calling them.
    """
    out: dict[str, set[str]] = {}
    features = set(getattr(task, "features", None) or [])
    for name in PROMPT_FIELDS:
        value = getattr(task.config, name, None)
        if not isinstance(value, str):
            continue
        if value in features or value.isidentifier():  # a column name (present or not)
            out[name] = {value}
        elif "{" in value:
            out[name] = _template_fields(value)
    return out


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _lm_eval_warnings() -> Iterator[_Collect]:
    handler = _Collect()
    logger = logging.getLogger("lm_eval")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _bad(messages: Sequence[str]) -> list[str]:
    return [m.split("\n", 1)[0] for m in messages if any(w in m for w in BAD_DATA_WARNINGS)]


def _docs(task: Any, n: int) -> list[Mapping]:
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    if docs is None:
        return []
    return [docs[i] for i in range(min(n, len(docs)))]


def _problems(task: Any, doc: Mapping, expected: dict[str, set[str]]) -> list[str]:
    """What is wrong with one document (empty: nothing)."""
    fields = set(doc)
    problems = [
        f"{name} reads the missing field(s) {sorted(need - fields)}"
        for name, need in expected.items()
        if need - fields
    ]
    if problems:
        return problems  # rendering would only produce the template's literal text
    try:
        text = task.doc_to_text(doc)
        target = task.doc_to_target(doc)
        choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None
    except Exception as err:
        return [f"its prompt functions raise {type(err).__name__}: {err}"]
    if isinstance(text, str) and not text.strip() and task.OUTPUT_TYPE == "generate_until":
        problems.append("doc_to_text gives an empty prompt")
    if task.OUTPUT_TYPE == "multiple_choice":
        if not choices:
            problems.append("doc_to_choice gives no choices")
        else:
            # Partial evaluation (winogrande): the prompt is the gold index and the target the shared
            # continuation, as lm-eval's `multiple_input` reads them.
            gold_of = text if isinstance(text, int) else target
            golds = gold_of if isinstance(gold_of, list) else [gold_of]
            for gold in golds:
                in_range = isinstance(gold, int) and 0 <= gold < len(choices)
                if not in_range and not (isinstance(gold, str) and gold in choices):
                    problems.append(
                        f"target {gold!r} is neither an index below {len(choices)} nor one of the "
                        f"choices {list(choices)[:6]}"
                    )
    elif target is None or (isinstance(target, str | list) and len(target) == 0):
        problems.append(f"doc_to_target gives {target!r}")
    return problems


def check_documents(task: Any, name: str, files: Sequence[str] = (), n: int = CHECKED_DOCS) -> int:
    """Run the first ``n`` scored documents of a built lm-eval task through its prompt functions.

    Raises `TaskDataError` naming the task, its files, the fields its prompts read and the fields
    its documents have when any document is wrong; returns the number of documents checked.
    """
    with _lm_eval_warnings() as caught:
        docs = _docs(task, n)
        expected = expected_fields(task)
        found: list[tuple[int, list[str]]] = []
        for i, doc in enumerate(docs):
            problems = _problems(task, doc, expected)
            if problems:
                found.append((i, problems))
    bad = _bad(caught.messages)
    if not found and not bad:
        return len(docs)
    where = f" ({', '.join(files)})" if files else ""
    have = sorted(docs[found[0][0] if found else 0]) if docs else []
    reads = sorted(set().union(*expected.values())) if expected else []
    seen: dict[str, list[int]] = {}
    for i, problems in found:
        for problem in problems:
            seen.setdefault(problem, []).append(i)
    details = "; ".join(f"{p} (document {', '.join(map(str, ids))})" for p, ids in list(seen.items())[:3])
    if bad:
        details = "; ".join(filter(None, [details, f"lm-eval warned: {bad[0]}"]))
    raise TaskDataError(
        f"task {name!r}{where}: its documents do not fit the task's prompts ({details}). "
        f"The task reads the fields {reads}; the documents have {have}. Provide the data in the "
        "columns of the task's own dataset (see its lm-eval YAML)."
    )


@contextmanager
def scoring_warnings(names: Sequence[str]) -> Iterator[list[str]]:
    """Collect lm-eval's bad-data warnings while tasks are scored; raises `TaskDataError` after the
    block when there were any, so a run whose targets were invalid is never stored as ok."""
    with _lm_eval_warnings() as caught:
        messages: list[str] = []
        yield messages
    bad = _bad(caught.messages)
    messages.extend(bad)
    if bad:
        raise TaskDataError(
            f"lm-eval warned {len(bad)} time(s) while scoring {', '.join(names)}: {bad[0]}. "
            "The scores are wrong: fix the task's data (its documents do not fit its prompts)."
        )
