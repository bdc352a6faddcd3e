"""Which exit heads pay for themselves on this device: heads chosen by priced time per token.

Why: every evaluated head that does not fire is pure overhead (DESIGN.md, cost model), and a
calibrated threshold says nothing about cost. At a high target a head may fire so rarely that
its matmul and decision cost more than its exits save; DSSD then runs slower than `full`
while doing `full`'s layer work. With ``calibration.heads=priced`` the runner decodes a few
calibration prompts (never the benchmark's held-out prompts) with subsets of the heads, prices
each subset's pass trace with the device's cost profile (``earlyexit.measure.cost_model``) and
keeps the subset with the lowest priced time per token. Decoding is deterministic and pricing
needs no clock, so the choice does not depend on timing noise, only on the profile.

The search is greedy backward elimination (drop the head whose removal lowers the priced time
most, until no removal does): 1 + n(n+1)/2 subsets for n heads instead of 2**n. A dropped
head's threshold becomes +inf, which ``ThresholdPolicy`` never evaluates, so every later stage
(accuracy, held-out shares, the benchmark) sees the chosen heads only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from earlyexit.decoding import DecodeSettings, Strategy
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.measure.cost_model import predict
from earlyexit.measure.profile import CostProfile
from earlyexit.measure.protocol import measure_decoding
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.graphs import Capture
from earlyexit.model.trace import TraceCounts

HEAD_CHOICES = ("all", "priced")
SELECTING_MODES = ("early-exit", "dssd")  # full uses no head; layerskip one fixed exit layer


@dataclass(frozen=True)
class Step:
    """One subset tried: its heads and its priced ms per output token."""

    heads: tuple[int, ...]
    priced_tpot_ms: float


def backward_elimination(layers: Sequence[int], priced: Callable[[tuple[int, ...]], float]) -> list[Step]:
    """Greedy search for the subset of `layers` with the lowest `priced` time.

    Returns every subset tried, in order; the first is all of `layers` and the kept subset is
    the one with the lowest price (ties keep more heads: a removal must lower the price).
    """
    current = tuple(sorted(layers))
    tried = [Step(current, priced(current))]
    best = tried[0]
    while best.heads:
        candidates = [tuple(h for h in best.heads if h != drop) for drop in best.heads]
        steps = [Step(c, priced(c)) for c in candidates]
        tried += steps
        cheapest = min(steps, key=lambda s: s.priced_tpot_ms)
        if not cheapest.priced_tpot_ms < best.priced_tpot_ms:
            break
        best = cheapest
    return tried


def kept(tried: Sequence[Step]) -> Step:
    """The cheapest subset tried; among equal prices the first tried (more heads)."""
    return min(tried, key=lambda s: s.priced_tpot_ms)


@dataclass(frozen=True)
class HeadSelection:
    """The heads kept, their thresholds (dropped heads at +inf) and every subset tried."""

    kept: tuple[int, ...]
    thresholds: dict[int, float]
    tried: tuple[Step, ...]
    full_priced_tpot_ms: float  # the same prompts decoded by `full`, priced alike

    def to_json(self) -> dict:
        return {
            "kept": list(self.kept),
            "thresholds": {str(k): _enc(v) for k, v in self.thresholds.items()},
            "tried": [{"heads": list(s.heads), "priced_tpot_ms": s.priced_tpot_ms} for s in self.tried],
            "full_priced_tpot_ms": self.full_priced_tpot_ms,
        }

    @classmethod
    def from_json(cls, data: dict) -> HeadSelection:
        return cls(
            kept=tuple(int(h) for h in data["kept"]),
            thresholds={int(k): float(v) for k, v in data["thresholds"].items()},
            tried=tuple(
                Step(tuple(int(h) for h in s["heads"]), float(s["priced_tpot_ms"])) for s in data["tried"]
            ),
            full_priced_tpot_ms=float(data["full_priced_tpot_ms"]),
        )

    def describe(self) -> str:
        """One line per subset tried, for the run's log."""
        lines = [f"head selection (priced, {self.full_priced_tpot_ms:.3f} ms/token for full):"]
        for s in self.tried:
            mark = "  <- kept" if s.heads == self.kept else ""
            lines.append(f"  heads {list(s.heads)}: {s.priced_tpot_ms:.3f} ms/token{mark}")
        return "\n".join(lines)


def _enc(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # strict JSON has no Infinity


def select_heads(
    adapter: ModelAdapter,
    heads: HeadSet,
    metric: str,
    thresholds: dict[int, float],
    make: Callable[[ThresholdPolicy | None], Strategy],
    prompts: list[torch.Tensor],
    settings: DecodeSettings,
    profile: CostProfile,
    mode: str,
    graphs: Capture | None = None,
) -> HeadSelection:
    """Decode `prompts` with subsets of the heads that can fire and keep the cheapest by `profile`.

    `make(policy)` builds the mode's strategy for a policy; `make(None)` builds `full`. Heads
    whose threshold is already +inf never fire and are not searched over.
    """
    if mode not in SELECTING_MODES:
        raise ValueError(f"head selection applies to modes {', '.join(SELECTING_MODES)}, not {mode!r}")
    live = [h for h in sorted(thresholds) if not (math.isinf(thresholds[h]) and thresholds[h] > 0)]
    most = 1 + len(live) * (len(live) + 1) // 2  # subsets the search may try, then `full`
    bar = tqdm(total=most + 1, desc="head selection", leave=False)

    def price_of(strategy: Strategy, name: str) -> float:
        _, summary = measure_decoding(strategy, adapter, prompts, settings, 1, 0, False, graphs)
        bar.update()
        trace = TraceCounts.from_json(summary["trace"])
        return predict(trace, summary["decode_tokens"], profile, name, metric)["tpot_ms"]

    def priced(subset: tuple[int, ...]) -> float:
        policy = ThresholdPolicy(heads, metric, {h: thresholds[h] for h in subset})
        return price_of(make(policy), mode)

    with bar:
        tried = backward_elimination(live, priced)
        full_ms = price_of(make(None), "full")
    chosen = kept(tried).heads
    out = {h: (t if h in chosen else math.inf) for h, t in thresholds.items()}
    return HeadSelection(chosen, out, tuple(tried), full_ms)
