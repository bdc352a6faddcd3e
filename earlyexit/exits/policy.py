"""Exit policies: given a head layer and the newest token's hidden state, exit or go on.

They plug into `ExitEngine.forward(exit_check=...)`. The decision is taken on the host
between segments (DESIGN.md): one scalar comes back from the device per evaluated head.
"""

from __future__ import annotations

import math

import torch

from earlyexit.exits.confidence import get_metric, read_summary
from earlyexit.exits.heads import HeadSet


class ThresholdPolicy:
    """Exit at the first head whose confidence score passes its calibrated threshold.

    Heads whose threshold is +inf can never fire, so they are not evaluated at all: an
    evaluated head that does not fire is pure overhead (the cost model in DESIGN.md).
    A NaN score never passes, so broken logits fall through to the full model.
    """

    def __init__(self, heads: HeadSet, metric: str, thresholds: dict[int, float]) -> None:
        missing = sorted(set(thresholds) - set(heads.layers))
        if missing:
            raise ValueError(
                f"thresholds given for layers {missing} that have no head (heads: {heads.layers})"
            )
        self.heads = heads
        self.metric = get_metric(metric)
        self.thresholds = {k: float(t) for k, t in sorted(thresholds.items()) if not math.isinf(t) or t < 0}

    @property
    def exit_layers(self) -> list[int]:
        return list(self.thresholds)

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """The head's logits if the newest token exits at `layer`, else None.

        Head, metric and threshold in one lean call with one device-to-host read
        (`Metric.passes`, as `Metric.decide`). Its score is the calibration's, bit for bit (one
        score function, `Metric.from_summary`), so it agrees with
        `should_exit(metric(logits), threshold)` even at the exact calibrated score, where a
        token must exit (tests/exits/test_threshold_edges.py).
        """
        threshold = self.thresholds.get(layer)
        if threshold is None:
            return None
        logits, summary = self.heads.with_summary(layer, hidden, self.metric.summary, self.metric.name)
        return logits if self.metric.passes(read_summary(summary), threshold) else None
