"""What each engine pass computed, as counts: the input of the cost model.

The engine records, per pass, every segment it ran (its layers, how many rows were the pass's
new tokens and how many were pending tokens carried deeper, the KV length attended over),
every exit check (head layer, fired or not) and the unembedding's rows. Only Python ints are
recorded: no timer and no device sync inside the decode loop. Under ``engine.kv=propagate`` a
pass also records the exited token's K/V projections for the layers it skipped
(``KVProjection``); under ``skip`` a segment's layers attend over different numbers of keys, so
it records the exact total (``attended``) beside a representative ``kv_len``. ``TraceCounts`` aggregates
passes into a multiset that prices in one sweep (``earlyexit.measure.cost_model``) and
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
    attended: int = 0  # keys attended per row summed over the layers, where they differ (kv=skip)

    @property
    def layers(self) -> int:
        return self.end - self.start + 1

    @property
    def keys_attended(self) -> int:
        """Keys each row attended to, summed over the segment's layers."""
        return self.attended or self.layers * self.kv_len

    @property
    def rows(self) -> int:
        return self.new_rows + self.pending_rows


@dataclass(frozen=True)
class KVProjection:
    """An exited token's K/V for layers ``start..end`` projected from its exit state (kv=propagate)."""

    start: int
    end: int
    rows: int

    @property
    def layers(self) -> int:
        return self.end - self.start + 1


@dataclass
class PassTrace:
    """Everything one ``ExitEngine.forward`` computed."""

    segments: list[SegmentRun] = field(default_factory=list)
    checks: list[tuple[int, bool]] = field(default_factory=list)  # (head layer, fired)
    unembed_rows: int = 0  # 0 when the pass exited before full depth
    projections: list[KVProjection] = field(default_factory=list)  # kv=propagate only
    previous_depth: int = 0  # the engine's pass before this one (prefill included)
    # Passes in a row, ending with the one before this, that stopped short of full depth: a
    # layer's weights settle in cache over several shallow passes, not after one.
    previous_run: int = 0
    # Rows of each head call that decided several checks at once (the batched engine's sequences at
    # one exit layer); empty where every check is a one-row call.
    head_calls: list[int] = field(default_factory=list)

    @property
    def exited(self) -> bool:
        return bool(self.checks) and self.checks[-1][1]

    @property
    def layer_rows(self) -> int:
        return sum(s.layers * s.rows for s in self.segments)

    @property
    def depth(self) -> int:
        """How many layers, from the first, this pass ran: whose weights it streamed."""
        return max((s.end + 1 for s in self.segments), default=0)

    def warm_layers(self, segment: SegmentRun) -> int:
        """How many of `segment`'s layers the pass before this one ran too. Between such a
        layer's two runs about `previous_depth` layers ran (those after it in that pass, those
        before it in this one), so when that pass was shallow its weights are still in cache."""
        return max(0, min(segment.end + 1, self.previous_depth) - segment.start)


# `run` of a warm segment stored before runs were recorded (see TraceCounts).
UNKNOWN_RUN = -1


@dataclass
class TraceCounts:
    """A multiset of passes' work, keyed so that equal work prices equally.

    ``segments`` counts ``(layers, new_rows, pending_rows, kv_len, exited, reuse, warm, run)``:
    ``exited`` says whether the pass ended at an exit, i.e. whether its new rows were drafts (or
    early-exited tokens) rather than tokens computed at full depth; ``warm`` is how many of the
    segment's layers the previous pass ran too (``PassTrace.warm_layers``), ``reuse`` that
    pass's depth and ``run`` how many shallow passes in a row came before (``previous_run``; both
    0 when ``warm`` is 0): a draft after drafts, or a verification's layers below the exit, find
    their weights partly in cache (``CostProfile.depth_ratio``). Traces stored before warm layers
    were recorded read 0, 0, 0: priced as after a full-depth pass; those stored before runs were
    recorded read ``UNKNOWN_RUN``: priced as the longest run a profile timed, as they were then.
    """

    passes: int = 0
    segments: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)  # (layer, fired) -> count
    unembed: Counter = field(default_factory=Counter)  # rows -> count
    projections: Counter = field(default_factory=Counter)  # (layers, rows) -> count (kv=propagate)
    # Head rows evaluated outside any pass's exit checks (DEL's shadow tokens: every candidate
    # layer's head on the states a round computed), priced as head matmuls by the cost model.
    extra_head_rows: int = 0
    head_calls: Counter = field(default_factory=Counter)  # rows -> head calls of that many rows

    def add(self, trace: PassTrace) -> None:
        self.passes += 1
        exited = trace.exited
        for s in trace.segments:
            warm = trace.warm_layers(s)
            reuse, run = (trace.previous_depth, trace.previous_run) if warm else (0, 0)
            self.segments[(s.layers, s.new_rows, s.pending_rows, s.kv_len, exited, reuse, warm, run)] += 1
        self.checks.update(trace.checks)
        if trace.unembed_rows:
            self.unembed[trace.unembed_rows] += 1
        self.projections.update((p.layers, p.rows) for p in trace.projections)
        self.head_calls.update(trace.head_calls)

    def update(self, other: TraceCounts) -> None:
        self.passes += other.passes
        self.segments.update(other.segments)
        self.checks.update(other.checks)
        self.unembed.update(other.unembed)
        self.projections.update(other.projections)
        self.extra_head_rows += other.extra_head_rows
        self.head_calls.update(other.head_calls)

    @property
    def layer_rows(self) -> int:
        return sum(k[0] * (k[1] + k[2]) * n for k, n in self.segments.items())

    @property
    def projected_rows(self) -> int:
        """Layer x row K/V projections of exited tokens (kv=propagate)."""
        return sum(layers * rows * n for (layers, rows), n in self.projections.items())

    @property
    def heads_evaluated(self) -> int:
        return sum(self.checks.values())

    @property
    def heads_fired(self) -> int:
        return sum(n for (_, fired), n in self.checks.items() if fired)

    def to_json(self) -> dict:
        return {
            "passes": self.passes,
            "segments": [[*k[:4], int(k[4]), *k[5:], n] for k, n in sorted(self.segments.items())],
            "checks": [[layer, int(fired), n] for (layer, fired), n in sorted(self.checks.items())],
            "unembed": [[rows, n] for rows, n in sorted(self.unembed.items())],
            "projections": [[layers, rows, n] for (layers, rows), n in sorted(self.projections.items())],
            "extra_head_rows": self.extra_head_rows,
            "head_calls": [[rows, n] for rows, n in sorted(self.head_calls.items())],
        }

    @classmethod
    def from_json(cls, data: dict) -> TraceCounts:
        out = cls(passes=int(data["passes"]))
        for row in data["segments"]:
            if len(row) < 8:  # stored before warm layers were recorded: priced as cold
                row = [*row[:5], 0, 0, row[-1]]
            if len(row) < 9:  # stored before runs were recorded
                row = [*row[:7], UNKNOWN_RUN if row[6] else 0, row[-1]]
            *key, exited, reuse, warm, run, n = row
            out.segments[(*map(int, key), bool(exited), int(reuse), int(warm), int(run))] += int(n)
        for layer, fired, n in data["checks"]:
            out.checks[(int(layer), bool(fired))] = int(n)
        for rows, n in data["unembed"]:
            out.unembed[int(rows)] = int(n)
        for layers, rows, n in data.get("projections", []):  # absent in records before kv strategies
            out.projections[(int(layers), int(rows))] = int(n)
        out.extra_head_rows = int(data.get("extra_head_rows", 0))  # absent before DEL
        for rows, n in data.get("head_calls", []):  # absent before batches: one row per check
            out.head_calls[int(rows)] = int(n)
        return out
