"""Confidence metrics that turn a head's logits into an exit score.

Convention: every metric returns a score where *higher means more confident*, so one rule
(`score >= threshold`) serves all of them. That is why `entropy` returns the NEGATIVE entropy
(in nats, so scores lie in [-log V, 0]); use `Metric.to_natural` to show the entropy itself.

Scores are computed in float32 from `log_softmax`, whatever the input dtype, so they are finite
for any finite logits (fp16 +-65504, fp32 +-3e38, huge bf16 values, all-equal or one-hot rows).
A row holding any nan or inf gets a NaN score, and `should_exit` never passes a NaN, so a broken
head can never trigger an exit silently.

ONE score function serves calibration and decoding: `Metric.from_summary`, which finishes a
summary (one to three float32 numbers per row, from `log_softmax`) on the host in float64 and
rounds the result to float32. The decode loop reaches it through `Metric.decide` (or
`ThresholdPolicy`): `summary` reduces one head's logits to those numbers on the device with a
handful of tensor ops, and a single device-to-host read brings them back. Every exit check of
every token pays for it, so it is kept lean: the profile measures it against the head's own
matmul. The batched score (`Metric.__call__`, what calibration stores and `should_exit` compares)
computes the very same numbers row by row (`summaries`) and finishes each with the same
`from_summary`. So the score a threshold was calibrated at is met by the decision at that very
threshold: the two paths once rounded differently (float32 `exp` against float64 `math.exp`,
a sum against a dot product) and disagreed at the exact score on 2,269 of 6,000 random rows.
The decision also compares with the threshold rounded to float32, as torch does when
`should_exit` compares a float32 score with a Python float.

Non-finite logits never exit on either path: each summary keeps a value that turns NaN or -inf
when any logit is not finite. The one place the paths part: finite logits near the float32
limit (+-3e38), where `log_softmax` itself overflows to -inf. The decision then declines to exit;
the batched score falls back to a formula that stays finite (`Metric.edge`), so statistics over
such rows stay defined. A decision never exits where the batched score would not.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["METRICS", "Metric", "get_metric", "read_summary", "should_exit", "to_float32"]


@dataclass(frozen=True)
class Metric:
    """A named confidence score, higher = more confident: `metric(logits[..., V]) -> float32[...]`.

    The score of a row is `from_summary(summary(row))` on every path; see the module docstring.
    """

    name: str
    description: str
    natural_label: str  # what `to_natural(score)` means, for reports
    to_natural: Callable[[float], float]  # score -> the quantity people usually quote
    summary: Callable[[torch.Tensor], torch.Tensor]  # logits [V] -> a few float32 numbers, on device
    summaries: Callable[[torch.Tensor], torch.Tensor]  # logits [N, V] -> [N, k]: row i is summary(row i)
    from_summary: Callable[[Sequence[float]], float]  # THE score function: numbers -> float32 score or NaN
    edge: Callable[[torch.Tensor], torch.Tensor]  # batched score for finite rows log_softmax overflows on
    min_vocab: int = 1

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores of logits [..., V] as float32 [...], on the logits' device.

        Row by row the very score `decide` compares: the same summary, finished by the same
        `from_summary`, so a threshold calibrated on these scores is met by the decision at it.
        """
        _check_vocab(logits, self.min_vocab, self.name)
        rows = logits.detach().reshape(-1, logits.shape[-1])
        numbers = self.summaries(rows).tolist() if len(rows) else []
        scores = torch.tensor([self.from_summary(s) for s in numbers], dtype=torch.float32)
        return self._edge_rows(rows, scores).reshape(logits.shape[:-1]).to(logits.device)

    def _edge_rows(self, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Finite rows the summary could not score (log-softmax overflow near +-3e38) get the
        `edge` formula, so statistics stay finite; the decision declines to exit on them."""
        redo = scores.isnan() & torch.isfinite(rows).all(dim=-1).cpu()
        if redo.any():
            scores[redo] = self.edge(rows[redo.to(rows.device)]).cpu()
        return scores

    def decide(self, logits: torch.Tensor, threshold: float) -> bool:
        """Whether one row of logits [V] exits at `threshold`: one host read, as `should_exit` rules."""
        return self.passes(read_summary(self.summary(logits)), threshold)

    def passes(self, summary: Sequence[float], threshold: float) -> bool:
        """The host half of `decide`, for a summary read back from the device (`read_summary`).

        An exit happens AT the threshold (`>=`): a saturated head (entropy 0, max-prob or margin
        1) calibrated at its saturated score must fire. The threshold is rounded to float32 as
        torch rounds it in `should_exit`, so both rules see the same number.
        """
        score = self.from_summary(summary)
        return math.isfinite(score) and score >= to_float32(threshold)


_FLOAT32 = struct.Struct("f")


def to_float32(x: float) -> float:
    """`x` rounded to the nearest float32 (as a Python float): what torch compares when a float32
    tensor meets a Python float, and the precision every score is stored at. Past the float32
    range it is +-inf, as the cast gives."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def read_summary(summary: torch.Tensor) -> list[float]:
    """A summary's numbers on the host: the decision's one device-to-host read. A 0-d summary
    (entropy's) is allowed, as reshaping it on the device would cost one more operation."""
    values = summary.tolist()
    return values if isinstance(values, list) else [values]


def _check_vocab(logits: torch.Tensor, min_vocab: int, name: str) -> None:
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"logits must have a non-empty last (vocab) dimension, got shape {tuple(logits.shape)}"
        )
    if logits.shape[-1] < min_vocab:
        raise ValueError(f"{name} needs a vocab of at least {min_vocab}, got shape {tuple(logits.shape)}")


# ---------------------------------------------------------------- the edge formulas
# Batched scores for finite rows whose log-softmax overflows (logits near +-3e38), where the
# summaries turn NaN: non-finite entries are zeroed to keep the arithmetic quiet, p log p is
# taken as 0 where p == 0, and rows with any non-finite logit are NaN.


def _log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 log-probabilities, plus a mask of rows whose logits are all finite."""
    x = logits.detach().to(torch.float32)
    finite = torch.isfinite(x)
    x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return torch.log_softmax(x, dim=-1), finite.all(dim=-1)


def _mask(score: torch.Tensor, row_ok: torch.Tensor) -> torch.Tensor:
    return torch.where(row_ok, score, torch.full((), float("nan"), dtype=score.dtype, device=score.device))


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """sum p log p (= -entropy, nats). p log p is taken as 0 where p == 0, so no 0 * -inf = nan."""
    logp, ok = _log_probs(logits)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device))
    return _mask(plogp.sum(dim=-1).clamp(max=0.0), ok)


def max_prob(logits: torch.Tensor) -> torch.Tensor:
    """Probability of the argmax token."""
    logp, ok = _log_probs(logits)
    return _mask(logp.max(dim=-1).values.exp(), ok)


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability; needs V >= 2."""
    logp, ok = _log_probs(logits)
    top = logp.topk(2, dim=-1).values.exp()
    return _mask(top[..., 0] - top[..., 1], ok)


# ---------------------------------------------------------------- the summaries
# Lean single-row summaries for `Metric.decide`. Each holds a value that is NaN or -inf when
# any logit is nan or +-inf: log_softmax turns +inf or nan into nan everywhere, and -inf into
# -inf (a NaN in the entropy's dot product, the minimum for max-prob and margin).


# Every tensor operation counts here: right after a pass through the layers, the operator
# dispatch path is out of cache and each op costs several times its warm time. Hence the cast
# inside log_softmax (no `.float()`), no `.detach()` (the engine runs under no_grad),
# and no reshape of entropy's 0-d dot product.


def _row_log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1, dtype=torch.float32)


def _entropy_summary(logits: torch.Tensor) -> torch.Tensor:
    logp = _row_log_probs(logits)
    return torch.dot(logp.exp(), logp)  # sum p log p, 0-d


def _max_prob_summary(logits: torch.Tensor) -> torch.Tensor:
    return torch.stack(_row_log_probs(logits).aminmax())  # (min, max) log-probability


def _margin_summary(logits: torch.Tensor) -> torch.Tensor:
    logp = _row_log_probs(logits)
    return torch.cat((logp.topk(2).values, logp.amin(0, keepdim=True)))  # top-1, top-2, min


# The same numbers for many rows [N, V] -> [N, k], equal to the single-row summary bit for bit:
# log-softmax reduces each row on its own, and max, min and top-k are exact whatever the order.
# A dot product is not: its sum depends on how it is split, so entropy runs the single-row
# summary itself on every row (slower, and only calibration and evaluation pay for it).


def _entropy_summaries(rows: torch.Tensor) -> torch.Tensor:
    return torch.stack([_entropy_summary(row) for row in rows])[:, None]


def _max_prob_summaries(rows: torch.Tensor) -> torch.Tensor:
    return torch.stack(_row_log_probs(rows).aminmax(dim=-1), dim=-1)


def _margin_summaries(rows: torch.Tensor) -> torch.Tensor:
    logp = _row_log_probs(rows)
    return torch.cat((logp.topk(2, dim=-1).values, logp.amin(-1, keepdim=True)), dim=-1)


# ---------------------------------------------------------------- the score function


def _score(value: float, *guards: float) -> float:
    """`value` at float32 precision, or NaN when it or a guard is not finite."""
    return to_float32(value) if all(math.isfinite(g) for g in (value, *guards)) else math.nan


def _entropy_score(s: Sequence[float]) -> float:
    return _score(min(s[0], 0.0))


def _max_prob_score(s: Sequence[float]) -> float:
    return _score(math.exp(s[1]), s[0])


def _margin_score(s: Sequence[float]) -> float:
    return _score(math.exp(s[0]) - math.exp(s[1]), s[2])


METRICS: dict[str, Metric] = {
    "entropy": Metric(
        name="entropy",
        description="negative Shannon entropy of the softmax, in nats (higher = more confident)",
        natural_label="entropy (nats)",
        to_natural=lambda score: -score,
        summary=_entropy_summary,
        summaries=_entropy_summaries,
        from_summary=_entropy_score,
        edge=neg_entropy,
    ),
    "max-prob": Metric(
        name="max-prob",
        description="softmax probability of the top token",
        natural_label="max probability",
        to_natural=lambda score: score,
        summary=_max_prob_summary,
        summaries=_max_prob_summaries,
        from_summary=_max_prob_score,
        edge=max_prob,
    ),
    "margin": Metric(
        name="margin",
        description="top-1 minus top-2 softmax probability",
        natural_label="top-1 minus top-2 probability",
        to_natural=lambda score: score,
        summary=_margin_summary,
        summaries=_margin_summaries,
        from_summary=_margin_score,
        edge=margin,
        min_vocab=2,
    ),
}


def get_metric(name: str) -> Metric:
    """Look up a metric by name; a typo fails loudly with the valid names."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown confidence metric {name!r}; valid metrics: {', '.join(sorted(METRICS))}"
        ) from None


def should_exit(score: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """`score >= threshold` for finite scores only: a NaN (or inf) score never exits."""
    return (score >= threshold) & torch.isfinite(score)
