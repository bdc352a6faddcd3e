"""Functions the project's summarisation YAMLs name (``!function utils.NAME``): LayerSkip's shot
rule, its one-line shot summaries, and per-document ROUGE-2 / ROUGE-L F-measures (`rouge_score`)."""

from __future__ import annotations

from typing import Any

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge2", "rougeL")
SHOT_SEED = 42  # LayerSkip data.py: train.shuffle(seed=42).select(range(n_shot))
SHOT_POOL = 8  # the first rows of that shuffle kept as shots: any n_shot <= 8 picks LayerSkip's rows
_SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def layerskip_shot_pool(dataset: Any) -> Any:
    """The training split in LayerSkip's shot order (shuffled with seed 42), its first rows only:
    lm-eval's ``first_n`` sampler then takes the first ``num_fewshot`` of them, for every document."""
    shuffled = dataset.shuffle(seed=SHOT_SEED, keep_in_memory=True)
    return shuffled.select(range(min(SHOT_POOL, len(shuffled))))


def cnn_dm_shot_target(doc: dict) -> str:
    """A shot's summary as LayerSkip writes it: the highlights with their newlines removed."""
    return doc["highlights"].replace("\n", "")


def xsum_shot_target(doc: dict) -> str:
    return doc["summary"].replace("\n", "")


def rouge(reference: str, prediction: str) -> dict[str, float]:
    """ROUGE-2 and ROUGE-L F-measure of one generated summary (rouge_score's default tokenizer)."""
    scores = _SCORER.score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def cnn_dm_rouge(doc: dict, results: list[str]) -> dict[str, float]:
    return rouge(doc["highlights"], results[0])


def xsum_rouge(doc: dict, results: list[str]) -> dict[str, float]:
    return rouge(doc["summary"], results[0])
