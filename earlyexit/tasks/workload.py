"""A generation workload: prompts, how each generation ends, and a quality score on the outputs.

Every published speedup is measured on a generation task with quality scored on the same
outputs, so the harness times and scores the very same generations: a workload hands the
measurement its prompts (token ids, a token budget and stops each) and scores the texts the
timed runs produced. Builders live beside this file (`heldout`, `stdlib_completion`, lm-eval
``generate_until`` tasks in `generation_tasks`); `workloads.build_workloads` picks them by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from earlyexit.decoding.stops import Stop

__all__ = ["Scores", "Workload", "WorkloadPrompt", "mean"]


@dataclass(frozen=True)
class WorkloadPrompt:
    """One prompt: its token ids, its token budget, where its output ends, and what scores it."""

    ids: tuple[int, ...]
    max_new_tokens: int
    stop: Stop = field(default_factory=Stop)
    reference: Any = None  # whatever the workload's scorer reads (an lm-eval doc, a reference text)

    def __post_init__(self) -> None:
        if not self.ids:
            raise ValueError("a workload prompt needs at least one token")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


# texts (the user's outputs, cut at their stops) -> metric -> one value per prompt
Scorer = Callable[[Sequence[str], Sequence[WorkloadPrompt]], dict[str, list[float]]]


def mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


@dataclass
class Scores:
    """Quality of one set of outputs: per-prompt values and the workload's aggregate per metric."""

    per_prompt: dict[str, list[float]]
    aggregate: dict[str, float]


@dataclass
class Workload:
    """Prompts + generation settings + a quality score (empty ``metrics``: speed and acceptance only).

    ``domain`` says what text it is (the embedded model knows Python, not English), ``note``
    anything a reader of its numbers must know (a metric skipped offline, code execution off).
    ``aggregations`` maps a metric to how lm-eval aggregates it (default: the mean over prompts).
    """

    name: str
    prompts: list[WorkloadPrompt]
    domain: str
    source: str
    metrics: tuple[str, ...] = ()
    scorer: Scorer | None = None
    aggregations: dict[str, Callable[[list[float]], float]] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    note: str = ""
    stop_at_eos: bool = True  # False: fixed-length continuations (the held-out benchmark)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"workload {self.name!r} has no prompts")
        if self.metrics and self.scorer is None:
            raise ValueError(f"workload {self.name!r} names metrics {self.metrics} but has no scorer")

    def score(self, texts: Sequence[str]) -> Scores:
        """Score the user's texts (one per prompt, in order) with the workload's own metrics."""
        if len(texts) != len(self.prompts):
            raise ValueError(f"{self.name}: {len(texts)} texts for {len(self.prompts)} prompts")
        if self.scorer is None or not self.metrics:
            return Scores({}, {})
        per_prompt = self.scorer(texts, self.prompts)
        missing = set(self.metrics) - set(per_prompt)
        if missing:
            raise ValueError(f"{self.name}: the scorer gave no {sorted(missing)}")
        aggregate = {m: self.aggregations.get(m, mean)(per_prompt[m]) for m in self.metrics}
        return Scores({m: list(per_prompt[m]) for m in self.metrics}, aggregate)
