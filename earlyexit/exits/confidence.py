"""Confidence metrics that turn a head's logits into an exit score.

Convention: every metric returns a score where *higher means more confident*, so one rule
(`score >= threshold`) serves all of them. That is why `entropy` returns the NEGATIVE entropy
(in nats, so scores lie in [-log V, 0]); use `Metric.to_natural` to show the entropy itself.

Scores are computed in float32 from `log_softmax`, whatever the input dtype, so they are finite
for any finite logits (fp16 +-65504, fp32 +-3e38, huge bf16 values, all-equal or one-hot rows).
A row holding any nan or inf gets a NaN score, and `should_exit` never passes a NaN, so a broken
head can never trigger an exit silently.

The decode loop does not call the batched score: `Metric.decide` takes one head's logits to an
exit decision with a handful of tensor ops and a single device-to-host read (`summary` reduces
the logits to one to three numbers on the device, `from_summary` finishes the score on the host).
Every exit check of every token pays for it, so it is kept lean: the profile measures it against
the head's own matmul. Non-finite logits still never exit there: each summary keeps a value that
turns NaN or -inf when any logit is not finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["METRICS", "Metric", "get_metric", "read_summary", "should_exit"]


@dataclass(frozen=True)
class Metric:
    """A named confidence score `(logits[..., V]) -> float32[...]`, higher = more confident."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    description: str
    natural_label: str  # what `to_natural(score)` means, for reports
    to_natural: Callable[[float], float]  # score -> the quantity people usually quote
    summary: Callable[[torch.Tensor], torch.Tensor]  # logits [V] -> a few float32 numbers, on device
    from_summary: Callable[[Sequence[float]], float]  # those numbers -> the score (NaN if not finite)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(logits)

    def decide(self, logits: torch.Tensor, threshold: float) -> bool:
        """Whether one row of logits [V] exits at `threshold`: one host read, as `should_exit` rules."""
        return self.passes(read_summary(self.summary(logits)), threshold)

    def passes(self, summary: Sequence[float], threshold: float) -> bool:
        """The host half of `decide`, for a summary read back from the device (`read_summary`)."""
        score = self.from_summary(summary)
        return math.isfinite(score) and score >= threshold


def read_summary(summary: torch.Tensor) -> list[float]:
    """A summary's numbers on the host: the decision's one device-to-host read. A 0-d summary
    (entropy's) is allowed, as reshaping it on the device would cost one more operation."""
    values = summary.tolist()
    return values if isinstance(values, list) else [values]


def _log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 log-probabilities, plus a mask of rows whose logits are all finite.

    Non-finite entries are zeroed before `log_softmax` only to keep the arithmetic quiet; the
    caller turns those rows' scores into NaN with `_mask`.
    """
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"logits must have a non-empty last (vocab) dimension, got shape {tuple(logits.shape)}"
        )
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
    if logits.dim() > 0 and logits.shape[-1] < 2:
        raise ValueError(f"margin needs a vocab of at least 2, got shape {tuple(logits.shape)}")
    logp, ok = _log_probs(logits)
    top = logp.topk(2, dim=-1).values.exp()
    return _mask(top[..., 0] - top[..., 1], ok)


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


def _finite_or_nan(value: float, *guards: float) -> float:
    return value if all(math.isfinite(g) for g in (value, *guards)) else math.nan


METRICS: dict[str, Metric] = {
    "entropy": Metric(
        name="entropy",
        fn=neg_entropy,
        description="negative Shannon entropy of the softmax, in nats (higher = more confident)",
        natural_label="entropy (nats)",
        to_natural=lambda score: -score,
        summary=_entropy_summary,
        from_summary=lambda s: _finite_or_nan(min(s[0], 0.0)),
    ),
    "max-prob": Metric(
        name="max-prob",
        fn=max_prob,
        description="softmax probability of the top token",
        natural_label="max probability",
        to_natural=lambda score: score,
        summary=_max_prob_summary,
        from_summary=lambda s: _finite_or_nan(math.exp(s[1]), s[0]),
    ),
    "margin": Metric(
        name="margin",
        fn=margin,
        description="top-1 minus top-2 softmax probability",
        natural_label="top-1 minus top-2 probability",
        to_natural=lambda score: score,
        summary=_margin_summary,
        from_summary=lambda s: _finite_or_nan(math.exp(s[0]) - math.exp(s[1]), s[2]),
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
