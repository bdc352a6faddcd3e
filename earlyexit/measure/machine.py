"""Is the machine busy? Load readings around a timed run, and a verdict a record can carry.

Why: a run on a busy 2-core VM gave timings that varied 60x, and nothing in its record said the
machine was busy. A reading is portable: the 1-minute load average (`os.getloadavg`), the CPUs
this process may run on, and on Linux the aggregate CPU times of /proc/stat, whose steal column
is the time the hypervisor gave this VM's CPUs to someone else. A run takes one reading at its
start (`warn_if_busy` logs a warning then, when other processes already hold the CPU) and one at
its end; `machine_metrics` turns both, with `full`'s time-per-token samples and the cost profile,
into the record's fields (`RECORD_KEYS`). Nothing here times anything.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

__all__ = [
    "BUSY_LOAD_PER_CPU",
    "RECORD_KEYS",
    "STEAL_LIMIT",
    "TPOT_SPREAD_LIMIT",
    "WARN_LOAD_PER_CPU",
    "LoadMonitor",
    "Reading",
    "busy",
    "cpu_count",
    "load_average",
    "machine_metrics",
    "profile_inconsistent",
    "read_cpu_times",
    "steal_share",
    "take_reading",
    "tpot_spread",
    "warn_if_busy",
]

# Verdict: busy when a reading's 1-minute load average exceeds 1.5 runnable tasks per CPU.
# The measurement itself keeps one core busy (the decode loop; with torch's intra-op threads on
# a CPU run, up to every core), so a 2-core VM at work reads 1-2 on its own. Above 3 (1.5 x 2)
# others want at least half the machine again on top of that: more runnable work than cores,
# and every timed step waits its turn. Per CPU, so it means the same on a bigger machine.
BUSY_LOAD_PER_CPU = 1.5
# Warning at the start: a load above one task per CPU before the run has begun. What is ours
# then is at most the start-up (or an earlier run in the same process); the rest is other
# processes already holding the CPU, and the run will share it with them. On this 2-core VM:
# above 2.
WARN_LOAD_PER_CPU = 1.0
# Verdict: busy when `full`'s time per token spreads more than 3x (max / min) over its repeated
# samples. `full` does the same work on every repeat; a quiet run of the committed CPU benchmark
# spread 1.72x over its prompts and repeats (4.35-7.46 ms), the busy run 60x.
TPOT_SPREAD_LIMIT = 3.0
# Verdict: busy when more than 5% of the CPU time between the readings was stolen by the
# hypervisor. The speedups at stake are a few percent (early-exit 1.01-1.11x in BENCHMARKS.md),
# and steal comes in bursts that land on some samples and not others.
STEAL_LIMIT = 0.05

# The fields a run record stores, in this order (earlyexit/harness/runner.py).
RECORD_KEYS = (
    "machine_busy",
    "machine_busy_reason",
    "load_avg_start",
    "load_avg_end",
    "cpu_steal_share",
    "full_tpot_spread",
    "profile_inconsistent",
)

PROC_STAT = Path("/proc/stat")
_STEAL = 7  # /proc/stat cpu columns: user nice system idle iowait irq softirq steal guest guest_nice
_COUNTED = 8  # guest time is already inside user time: the first eight columns are the total


@dataclass(frozen=True)
class Reading:
    """The machine's load at one moment: what `busy` judges and a record keeps."""

    load_avg: float | None  # 1-minute load average; None where the OS keeps none
    cpus: int  # CPUs this process may run on
    cpu_times: tuple[int, ...] | None  # /proc/stat's aggregate cpu line (clock ticks); None off Linux


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none (Windows, some sandboxes)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def cpu_count() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (a container or
    `taskset` may allow fewer than the machine has), else every CPU, at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def read_cpu_times(path: Path = PROC_STAT) -> tuple[int, ...] | None:
    """The aggregate `cpu` line of /proc/stat as integers, or None where there is none (not
    Linux, or a kernel too old to count steal): then the steal share is unknown, not zero."""
    try:
        with open(path) as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) <= _STEAL + 1:
        return None
    try:
        return tuple(int(v) for v in first[1:])
    except ValueError:
        return None


def take_reading() -> Reading:
    """The machine's load now (cheap: two system calls and one small file read)."""
    return Reading(load_average(), cpu_count(), read_cpu_times())


def steal_share(start: Reading, end: Reading) -> float | None:
    """The share of CPU time between two readings that the hypervisor stole, or None when a
    reading has no CPU times or no time passed between them (the share would be 0/0)."""
    if start.cpu_times is None or end.cpu_times is None:
        return None
    if min(len(start.cpu_times), len(end.cpu_times)) < _COUNTED:
        return None
    delta = [b - a for a, b in zip(start.cpu_times[:_COUNTED], end.cpu_times[:_COUNTED], strict=True)]
    total = sum(delta)
    if total <= 0:
        return None
    return max(0, delta[_STEAL]) / total


def tpot_spread(samples: Sequence[float]) -> float | None:
    """max / min of the finite, positive samples; None with fewer than two. A one-token output
    has no time per token (NaN): it says nothing about the machine, so it is left out."""
    values = [float(v) for v in samples if isinstance(v, Real) and math.isfinite(v) and v > 0]
    if len(values) < 2:
        return None
    return max(values) / min(values)


def _load_reasons(readings: Sequence[Reading]) -> list[str]:
    """One reason per reading whose load average is above BUSY_LOAD_PER_CPU per CPU."""
    reasons = []
    for name, r in zip(_reading_names(len(readings)), readings, strict=True):
        if r.load_avg is not None and r.load_avg > BUSY_LOAD_PER_CPU * r.cpus:
            limit = BUSY_LOAD_PER_CPU * r.cpus
            reasons.append(
                f"load average {r.load_avg:.2f} at the {name} is above {BUSY_LOAD_PER_CPU:g} x "
                f"{r.cpus} CPUs = {limit:g}"
            )
    return reasons


def _reading_names(n: int) -> list[str]:
    if n == 2:
        return ["start", "end"]
    return [f"reading {i + 1}" for i in range(n)]


def busy(readings: Sequence[Reading], full_tpot_samples: Sequence[float]) -> tuple[bool, str]:
    """(busy, why): busy when a reading's load average, `full`'s time-per-token spread or the
    CPU steal between the first and last reading passes its limit (module constants). `why`
    names every limit passed, with the numbers, and is "" when the machine was quiet. A value
    that cannot be read (no load average, no /proc/stat) passes no limit."""
    reasons = _load_reasons(readings)
    spread = tpot_spread(full_tpot_samples)
    if spread is not None and spread > TPOT_SPREAD_LIMIT:
        reasons.append(
            f"full's time per token spread {spread:.1f}x (max/min over its repeats of each prompt), "
            f"above {TPOT_SPREAD_LIMIT:g}x"
        )
    stolen = steal_share(readings[0], readings[-1]) if readings else None
    if stolen is not None and stolen > STEAL_LIMIT:
        reasons.append(f"CPU steal {stolen:.1%} of the run's CPU time, above {STEAL_LIMIT:.0%}")
    return bool(reasons), "; ".join(reasons)


# The cost profile's times (earlyexit/measure/profile.py, CostProfile) and its depth ratios:
# each a time or a ratio of times, so never negative. A negative one is left over from a
# difference of two timings that a busy machine reordered; NaN from a 0/0.
_PROFILE_NUMBERS = (
    "segment_fixed_ms",
    "layer_ms",
    "unembed_ms",
    "head_ms",
    "decision_ms",
    "pass_fixed_ms",
    "projection_layer_ms",
    "depth_ratio",
)


def _numbers(value: object) -> list[float]:
    """Every number inside nested lists and dicts (None and strings skipped)."""
    if isinstance(value, Mapping):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, Real) and not isinstance(value, bool):
        return [float(value)]
    return []


def profile_inconsistent(profile_json: Mapping) -> bool:
    """Whether a cost profile (`CostProfile.to_json()`) holds a negative or non-finite time or
    per-layer depth ratio: a profile a busy machine measured that prices nothing reliably."""
    values = [x for key in _PROFILE_NUMBERS for x in _numbers(profile_json.get(key))]
    return any(not math.isfinite(x) or x < 0 for x in values)


def machine_metrics(
    start: Reading,
    end: Reading,
    full_tpot_samples: Sequence[float],
    profile_json: Mapping | None = None,
) -> dict:
    """The record's machine fields (`RECORD_KEYS`, exactly), from the readings at the start and
    end of a run, `full`'s time-per-token samples and its cost profile (None: no profile, and
    `profile_inconsistent` is None, unknown)."""
    verdict, reason = busy([start, end], full_tpot_samples)
    return {
        "machine_busy": verdict,
        "machine_busy_reason": reason,
        "load_avg_start": start.load_avg,
        "load_avg_end": end.load_avg,
        "cpu_steal_share": steal_share(start, end),
        "full_tpot_spread": tpot_spread(full_tpot_samples),
        "profile_inconsistent": None if profile_json is None else profile_inconsistent(profile_json),
    }


def warn_if_busy(log: logging.Logger, reading: Reading | None = None) -> Reading:
    """Log a warning when other processes already hold the CPU as a run starts (load average
    above WARN_LOAD_PER_CPU per CPU), naming the load and the CPU count, so a noisy result is
    explained before it is read. Returns the reading (taken now unless given): the run's start."""
    reading = reading if reading is not None else take_reading()
    load, cpus = reading.load_avg, reading.cpus
    if load is not None and load > WARN_LOAD_PER_CPU * cpus:
        log.warning(
            "machine busy before the run: 1-minute load average %.2f on %d CPU%s (above %g per CPU); "
            "other processes hold the CPU, so timings will be noisy and slow",
            load,
            cpus,
            "" if cpus == 1 else "s",
            WARN_LOAD_PER_CPU,
        )
    return reading


class LoadMonitor:
    """A reading at the start of a run (with the warning) and one at its end."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logging.getLogger(__name__)
        self.start: Reading | None = None
        self.end: Reading | None = None

    def begin(self) -> Reading:
        """The start reading; warns when the machine is already busy."""
        self.start = warn_if_busy(self.log)
        return self.start

    def finish(self) -> Reading:
        """The end reading."""
        self.end = take_reading()
        return self.end

    def metrics(self, full_tpot_samples: Sequence[float], profile_json: Mapping | None = None) -> dict:
        """`machine_metrics` over this run's readings (`begin` and `finish` first)."""
        if self.start is None or self.end is None:
            raise ValueError("LoadMonitor needs begin() before the run and finish() after it")
        return machine_metrics(self.start, self.end, full_tpot_samples, profile_json)
