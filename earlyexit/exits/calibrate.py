"""Per-head exit thresholds by "max coverage" calibration (Valade, arXiv 2407.21082).

On a calibration set each head gives, per token, a confidence score and whether its argmax agrees
with the final layer's. For a target agreement t, the threshold is the loosest score such that
the tokens at or above it agree with the final layer at a rate >= t: as many tokens as possible
exit while the promised agreement still holds on the calibration set.

Scores follow `earlyexit.exits.confidence`: higher = more confident, and a non-finite score never exits
(`should_exit`), so here it is never counted as confident, but it still counts as a token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np
import torch

from earlyexit.exits.confidence import should_exit

__all__ = [
    "DEFAULT_TARGETS",
    "Calibration",
    "calibrate",
    "heldout_check",
    "max_coverage_threshold",
    "separation_report",
    "validate_targets",
]

DEFAULT_TARGETS = (0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.99)

JSON_FORMAT = "earlyexit.calibration/1"


def validate_targets(targets: Iterable[float] | float) -> tuple[float, ...]:
    """Targets are agreement rates in (0, 1]; 0 would let everything exit, > 1 is impossible."""
    if isinstance(targets, Real):
        targets = (targets,)
    out = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, Real):
            raise ValueError(f"target {t!r} is not a number; targets must lie in (0, 1]")
        t = float(t)
        if not 0.0 < t <= 1.0:  # also rejects nan
            raise ValueError(f"target {t!r} is outside the allowed range (0, 1]")
        if t in out:
            raise ValueError(f"target {t!r} is given twice")
        out.append(t)
    if not out:
        raise ValueError("no targets given; need at least one in (0, 1]")
    return tuple(out)


def _as_pair(scores: torch.Tensor, agree: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(scores).detach().cpu().reshape(-1)
    a = torch.as_tensor(agree).detach().cpu().reshape(-1)
    if s.numel() != a.numel():
        raise ValueError(f"scores has {s.numel()} tokens but agree has {a.numel()}")
    if not s.is_floating_point():
        s = s.to(torch.float64)
    return s, a.to(torch.bool)


def max_coverage_threshold(scores: torch.Tensor, agree: torch.Tensor, target: float) -> tuple[float, float]:
    """(threshold, coverage) for one head and one target.

    Tokens are taken from most to least confident, cutting only at the end of a tie group (equal
    scores exit together, so the agreement achieved on this set really is >= target). Coverage is
    the fraction of ALL tokens, non-finite-score ones included, that would exit. If no cut reaches
    the target the head never exits: (inf, 0.0).
    """
    (target,) = validate_targets((target,))
    s, a = _as_pair(scores, agree)
    n = s.numel()
    finite = torch.isfinite(s)
    s, a = s[finite], a[finite]
    if s.numel() == 0:
        return math.inf, 0.0
    order = torch.argsort(s, descending=True, stable=True)
    s, a = s[order], a[order]
    count = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    rate = torch.cumsum(a.to(torch.float64), dim=0) / count
    group_end = torch.ones(s.numel(), dtype=torch.bool)
    group_end[:-1] = s[1:] != s[:-1]
    ok = torch.nonzero(group_end & (rate >= target)).flatten()
    if ok.numel() == 0:
        return math.inf, 0.0
    last = int(ok[-1])  # the largest admissible prefix = the loosest threshold
    return float(s[last]), (last + 1) / n


@dataclass
class Calibration:
    """Thresholds per head layer and target; `thresholds[layer][i]` goes with `targets[i]`.

    A threshold of +inf means the head never exits at that target.
    """

    metric: str
    targets: list[float]
    layers: list[int]
    thresholds: dict[int, list[float]]
    coverage: dict[int, list[float]]
    n_tokens: int

    def _target_index(self, target: float) -> int:
        for i, t in enumerate(self.targets):
            if math.isclose(t, target, rel_tol=0.0, abs_tol=1e-12):
                return i
        raise KeyError(f"target {target!r} was not calibrated; calibrated targets: {self.targets}")

    def threshold(self, layer: int, target: float) -> float:
        if layer not in self.thresholds:
            raise KeyError(f"layer {layer} was not calibrated; calibrated layers: {self.layers}")
        return self.thresholds[layer][self._target_index(target)]

    def thresholds_for(self, target: float) -> dict[int, float]:
        """All heads' thresholds for one target, as an engine wants them."""
        i = self._target_index(target)
        return {layer: self.thresholds[layer][i] for layer in self.layers}

    def to_json(self) -> dict:
        """Strict JSON (no NaN/Infinity literals): non-finite floats are the strings "inf", "-inf", "nan"."""
        return {
            "format": JSON_FORMAT,
            "metric": self.metric,
            "targets": list(self.targets),
            "layers": list(self.layers),
            "n_tokens": self.n_tokens,
            "thresholds": {str(k): [_enc(x) for x in v] for k, v in self.thresholds.items()},
            "coverage": {str(k): [_enc(x) for x in v] for k, v in self.coverage.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Calibration:
        fmt = data.get("format", JSON_FORMAT)
        if fmt != JSON_FORMAT:
            raise ValueError(f"unsupported calibration format {fmt!r}, expected {JSON_FORMAT!r}")
        return cls(
            metric=data["metric"],
            targets=list(validate_targets(data["targets"])),
            layers=[int(x) for x in data["layers"]],
            thresholds={int(k): [_dec(x) for x in v] for k, v in data["thresholds"].items()},
            coverage={int(k): [_dec(x) for x in v] for k, v in data["coverage"].items()},
            n_tokens=int(data["n_tokens"]),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls.from_json(json.loads(Path(path).read_text()))


def _enc(x: float) -> float | str:
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _dec(x: float | str) -> float:
    if isinstance(x, str):
        if x not in ("inf", "-inf", "nan"):
            raise ValueError(f"bad float {x!r} in calibration file")
    return float(x)


def _check_layers(
    scores_by_layer: Mapping[int, torch.Tensor], agree_by_layer: Mapping[int, torch.Tensor]
) -> None:
    missing = sorted(set(scores_by_layer) ^ set(agree_by_layer))
    if missing:
        raise ValueError(f"scores and agree cover different layers; unmatched: {missing}")


def calibrate(
    scores_by_layer: Mapping[int, torch.Tensor],
    agree_by_layer: Mapping[int, torch.Tensor],
    metric: str,
    targets: Iterable[float] = DEFAULT_TARGETS,
) -> Calibration:
    """Max-coverage thresholds for every head layer and target, on one calibration token set."""
    targets = validate_targets(targets)
    _check_layers(scores_by_layer, agree_by_layer)
    if not scores_by_layer:
        raise ValueError("no layers to calibrate")
    layers = sorted(int(k) for k in scores_by_layer)
    sizes = {k: torch.as_tensor(scores_by_layer[k]).numel() for k in layers}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every head must be scored on the same calibration tokens; token counts: {sizes}")
    thresholds: dict[int, list[float]] = {}
    coverage: dict[int, list[float]] = {}
    for layer in layers:
        pairs = [max_coverage_threshold(scores_by_layer[layer], agree_by_layer[layer], t) for t in targets]
        thresholds[layer] = [p[0] for p in pairs]
        coverage[layer] = [p[1] for p in pairs]
    return Calibration(
        metric=metric,
        targets=list(targets),
        layers=layers,
        thresholds=thresholds,
        coverage=coverage,
        n_tokens=sizes[layers[0]],
    )


def heldout_check(
    cal: Calibration,
    scores_by_layer: Mapping[int, torch.Tensor],
    agree_by_layer: Mapping[int, torch.Tensor],
) -> list[dict]:
    """Apply calibrated thresholds to held-out tokens: does the promised agreement generalise?

    heldout_agreement is the agreement among held-out tokens that exit (NaN when none do).
    """
    _check_layers(scores_by_layer, agree_by_layer)
    rows = []
    for layer in cal.layers:
        if layer not in scores_by_layer:
            raise KeyError(f"held-out data has no scores for calibrated layer {layer}")
        s, a = _as_pair(scores_by_layer[layer], agree_by_layer[layer])
        n = s.numel()
        for i, target in enumerate(cal.targets):
            threshold = cal.thresholds[layer][i]
            passed = should_exit(s, threshold)
            k = int(passed.sum())
            rows.append(
                {
                    "layer": layer,
                    "target": target,
                    "threshold": threshold,
                    "calib_coverage": cal.coverage[layer][i],
                    "heldout_coverage": k / n if n else math.nan,
                    "heldout_agreement": float(a[passed].double().mean()) if k else math.nan,
                    "heldout_n": n,
                }
            )
    return rows


def _auroc(scores: torch.Tensor, agree: torch.Tensor) -> float:
    """AUROC of the score for predicting agree; non-finite scores rank as least confident.

    Those never exit, so that is where they belong. AUROC depends only on the ordering, so the
    scores are replaced by dense ranks (non-finite -> 0), which keeps every token and sidesteps
    sklearn's refusal of NaN/inf.
    """
    y = agree.numpy()
    if y.size == 0 or y.all() or not y.any():
        return math.nan
    from sklearn.metrics import roc_auc_score  # lazy: sklearn is slow to import and only needed here

    s = scores.to(torch.float64).numpy()
    finite = np.isfinite(s)
    ranks = np.zeros(s.shape, dtype=np.float64)
    ranks[finite] = np.unique(s[finite], return_inverse=True)[1] + 1
    return float(roc_auc_score(y, ranks))


def separation_report(
    scores_by_metric_and_layer: Mapping[str, Mapping[int, torch.Tensor]],
    agree_by_layer: Mapping[int, torch.Tensor],
) -> list[dict]:
    """How well each metric separates agreeing from disagreeing tokens, per head layer.

    One row per (metric, layer): auroc (NaN if only one class is present), n, agree_rate.
    """
    rows = []
    for metric, by_layer in scores_by_metric_and_layer.items():
        for layer in sorted(by_layer):
            if layer not in agree_by_layer:
                raise KeyError(f"no agree labels for layer {layer} (metric {metric!r})")
            s, a = _as_pair(by_layer[layer], agree_by_layer[layer])
            n = s.numel()
            rows.append(
                {
                    "metric": metric,
                    "layer": layer,
                    "auroc": _auroc(s, a),
                    "n": n,
                    "agree_rate": float(a.double().mean()) if n else math.nan,
                }
            )
    return rows
