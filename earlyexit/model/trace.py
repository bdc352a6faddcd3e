"""What each engine pass computed, as counts: the input of the cost model.

The engine records, per pass, every segment it ran (its layers, how many rows were the pass's
new tokens and how many were pending tokens carried deeper, the KV length attended over),
every exit check (head layer, fired or not) and the unembedding's rows. Only Python ints are
recorded: no timer and no device sync inside the decode loop. ``TraceCounts`` aggregates
passes into a multiset that prices in one sweep (``earlyexit.harness.cost_model``) and
round-trips through JSON, so a stored run can be re-priced with another device's profile.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SegmentRun:
    """One segment of one pass: layers ``start..end`` on ``new + pending`` rows."""

    start: int
    end: int
    new_rows: int  # the pass's own tokens (one per decode step; the prompt in prefill)
    pending_rows: int  # exited tokens carried through the layers they skipped
    kv_len: int  # keys attended over (a graphed pass attends over its whole KV bucket)

    @property
    def layers(self) -> int:
        return self.end - self.start + 1

    @property
    def rows(self) -> int:
        return self.new_rows + self.pending_rows


@dataclass
class PassTrace:
    """Everything one ``ExitEngine.forward`` computed."""

    segments: list[SegmentRun] = field(default_factory=list)
    checks: list[tuple[int, bool]] = field(default_factory=list)  # (head layer, fired)
    unembed_rows: int = 0  # 0 when the pass exited before full depth

    @property
    def exited(self) -> bool:
        return bool(self.checks) and self.checks[-1][1]

    @property
    def layer_rows(self) -> int:
        return sum(s.layers * s.rows for s in self.segments)


@dataclass
class TraceCounts:
    """A multiset of passes' work, keyed so that equal work prices equally.

    ``segments`` counts ``(layers, new_rows, pending_rows, kv_len, exited)``: ``exited`` says
    whether the pass ended at an exit, i.e. whether its new rows were drafts (or early-exited
    tokens) rather than tokens computed at full depth.
    """

    passes: int = 0
    segments: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)  # (layer, fired) -> count
    unembed: Counter = field(default_factory=Counter)  # rows -> count

    def add(self, trace: PassTrace) -> None:
        self.passes += 1
        exited = trace.exited
        for s in trace.segments:
            self.segments[(s.layers, s.new_rows, s.pending_rows, s.kv_len, exited)] += 1
        self.checks.update(trace.checks)
        if trace.unembed_rows:
            self.unembed[trace.unembed_rows] += 1

    def update(self, other: TraceCounts) -> None:
        self.passes += other.passes
        self.segments.update(other.segments)
        self.checks.update(other.checks)
        self.unembed.update(other.unembed)

    @property
    def layer_rows(self) -> int:
        return sum(k[0] * (k[1] + k[2]) * n for k, n in self.segments.items())

    @property
    def heads_evaluated(self) -> int:
        return sum(self.checks.values())

    @property
    def heads_fired(self) -> int:
        return sum(n for (_, fired), n in self.checks.items() if fired)

    def to_json(self) -> dict:
        return {
            "passes": self.passes,
            "segments": [[*k[:4], int(k[4]), n] for k, n in sorted(self.segments.items())],
            "checks": [[layer, int(fired), n] for (layer, fired), n in sorted(self.checks.items())],
            "unembed": [[rows, n] for rows, n in sorted(self.unembed.items())],
        }

    @classmethod
    def from_json(cls, data: dict) -> TraceCounts:
        out = cls(passes=int(data["passes"]))
        for *key, exited, n in data["segments"]:
            out.segments[(*map(int, key), bool(exited))] = int(n)
        for layer, fired, n in data["checks"]:
            out.checks[(int(layer), bool(fired))] = int(n)
        for rows, n in data["unembed"]:
            out.unembed[int(rows)] = int(n)
        return out
