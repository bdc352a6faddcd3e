"""Batches: throughput and per-sequence time at batch size B, `full`, the mode and transformers' batched
`generate` interleaved batch by batch.

Why B matters: a self-speculative or early-exit method saves layers per token, but at B > 1 a pass
already carries B rows, so a layer saved for one sequence costs the same weight traffic as before
for the others, and drafting per sequence stalls sequences that wait for verification. Whether
exits still pay is a ratio at each B, measured side by side like every other speedup here.

A workload's prompts are taken in consecutive groups of B (a last, smaller group is left out: every
sample is a whole batch of B, and the log says how many prompts were left out). Each group is one
sample of every strategy, in alternating order per sample as `measure_interleaved` runs them,
``repeats`` times. B = 1 runs today's batch-1 path (`generate_batch` with one prompt), so the
curve starts where the rest of the record's numbers are.

Per sample: the batch's output tokens and wall time (throughput = tokens / time, prefill included,
as the record's headline speedup), and per sequence the time from its first token to its last
over its tokens after the first (``seq_*``: what one user of a batched server waits per token).
Transformers' `generate` reports no per-sequence finish, so its sequences all finish with the
batch. Work counts (trace, FLOPs, acceptance) are taken from the first repeat: decoding is
deterministic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from earlyexit.decoding import DecodeSettings, Strategy
from earlyexit.decoding.base import engine_for
from earlyexit.decoding.batched import batched_engine_for, generate_batch
from earlyexit.measure.batched_baselines import hf_generate_batch
from earlyexit.measure.cost_model import predict
from earlyexit.measure.profile import CostProfile
from earlyexit.measure.workloads import ratio_interval
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.trace import TraceCounts

log = logging.getLogger(__name__)

__all__ = [
    "BatchMeasured",
    "BatchSample",
    "HF_BATCHED",
    "batch_groups",
    "batch_metrics",
    "check_batch_sizes",
    "measure_batches",
]

HF_BATCHED = "hf_generate"  # the outside baseline at every B: transformers' greedy generate, left-padded


@dataclass(frozen=True)
class BatchSample:
    """One batch decoded by one strategy."""

    tokens: int  # output tokens, all sequences
    total_s: float  # the batch's wall time, prefill included
    prefill_s: float  # to the batch's first token
    seq_decode_s: float  # per sequence, first token to its last, summed over the batch
    seq_decode_tokens: int  # per sequence, tokens after the first, summed


@dataclass
class BatchMeasured:
    """One strategy at one batch size on one workload: every sample, and the first repeat's work."""

    name: str
    size: int
    samples: list[BatchSample] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)  # per prompt measured, in order (first repeat)
    trace: TraceCounts = field(default_factory=TraceCounts)  # decode passes, first repeat
    flops: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def decode_tokens(self) -> int:
        """Output tokens after each sequence's first, first repeat (what the trace priced produced)."""
        groups = len(self.ids) // self.size if self.size else 0
        return sum(s.seq_decode_tokens for s in self.samples[:groups])


def check_batch_sizes(sizes: Sequence[int], prompts: int, key: str = "bench.batch_size") -> list[int]:
    """The batch sizes as sorted distinct ints; refused: none, one below 1, one above the prompts a
    workload has (a batch needs that many prompts)."""
    if not sizes:
        raise ValueError(f"{key} is empty: give a batch size (1 = one sequence at a time) or a list")
    bad = [b for b in sizes if not isinstance(b, int) or isinstance(b, bool) or b < 1]
    if bad:
        raise ValueError(f"{key} must hold integers >= 1, got {list(sizes)}")
    too_big = [b for b in sizes if b > prompts]
    if too_big:
        raise ValueError(
            f"{key}={list(sizes)}: a batch of {max(too_big)} needs as many prompts, and the workloads "
            f"have {prompts} (bench.limit, or bench.prompts); raise it or drop {too_big}"
        )
    return sorted(set(sizes))


def batch_groups(prompts: int, size: int) -> list[list[int]]:
    """Consecutive groups of ``size`` prompt indices; a last, smaller group is left out."""
    return [list(range(i, i + size)) for i in range(0, prompts - size + 1, size)]


class _Runner:
    """One strategy's batched decode behind one call: the engine built once per batch size."""

    def __init__(self, strategy: Strategy | None, adapter: ModelAdapter, size: int, max_len: int) -> None:
        self.strategy, self.adapter, self.size = strategy, adapter, size
        self.name = strategy.name if strategy is not None else HF_BATCHED
        self.engine = None
        if strategy is not None:
            self.engine = (
                engine_for(strategy, adapter, max_len=max_len)
                if size == 1
                else batched_engine_for(strategy, adapter, size, max_len)
            )
        self.max_len = max_len

    def run(self, prompts: list[torch.Tensor], settings: list[DecodeSettings]):
        """(sample, ids per sequence, decode trace, FLOPs, drafted, accepted) of one batch."""
        if self.strategy is None:
            got = hf_generate_batch(self.adapter.model, prompts, settings, self.max_len)
            seq_tokens = sum(max(0, len(i) - 1) for i in got.ids)
            decode_s = (got.total_s - got.ttft_s) * sum(1 for i in got.ids if len(i) > 1)
            sample = BatchSample(got.tokens, got.total_s, got.ttft_s, decode_s, seq_tokens)
            return sample, got.ids, got.trace, got.flops, 0, 0
        got = generate_batch(self.strategy, self.engine, prompts, settings)
        first, finish = got.first_token_s, got.finish_s
        seq_s = sum(f - t for f, t, ids in zip(finish, first, got.ids, strict=True) if len(ids) > 1)
        seq_tokens = sum(max(0, len(i) - 1) for i in got.ids)
        sample = BatchSample(got.tokens, got.total_s, min(first), seq_s, seq_tokens)
        return sample, got.ids, got.trace, got.flops, got.drafted, got.accepted


def measure_batches(
    strategies: Sequence[Strategy],
    adapter: ModelAdapter,
    prompts: Sequence[torch.Tensor],
    settings: Sequence[DecodeSettings],
    size: int,
    repeats: int = 3,
    warmup: int = 1,
    with_hf: bool = True,
    max_len: int | None = None,
    progress: bool = False,
    desc: str = "",
) -> list[BatchMeasured]:
    """Every strategy (full first) and, with ``with_hf``, transformers' batched `generate` on the
    prompts in groups of ``size``, interleaved; returns one `BatchMeasured` each, in that order."""
    groups = batch_groups(len(prompts), size)
    if not groups:
        raise ValueError(f"a batch of {size} needs {size} prompts, got {len(prompts)}")
    left = len(prompts) - len(groups) * size
    if left:
        log.info("batch %d: %d of %d prompts left out (groups of %d)", size, left, len(prompts), size)
    max_len = max_len or adapter.max_positions
    runners = [_Runner(s, adapter, size, max_len) for s in strategies]
    if with_hf:
        runners.append(_Runner(None, adapter, size, max_len))
    out = [BatchMeasured(r.name, size) for r in runners]
    batch = [[prompts[i] for i in g] for g in groups]
    batch_settings = [[settings[i] for i in g] for g in groups]
    for runner in runners:  # untimed: first calls allocate and warm caches
        for _ in range(warmup):
            runner.run(batch[0], batch_settings[0])
    order = list(range(len(runners)))
    samples = repeats * len(groups)
    for j in tqdm(range(samples), desc=desc or f"batch {size}", disable=not progress):
        g = j % len(groups)
        for k in order if j % 2 == 0 else order[::-1]:
            sample, ids, trace, flops, drafted, accepted = runners[k].run(batch[g], batch_settings[g])
            m = out[k]
            m.samples.append(sample)
            if j < len(groups):
                m.ids.extend(ids)
                m.trace.update(trace)
                m.flops += flops
                m.drafted += drafted
                m.accepted += accepted
    return out


def _arrays(samples: Sequence[BatchSample]) -> dict[str, np.ndarray]:
    return {
        "tokens": np.array([s.tokens for s in samples], dtype=float),
        "total_s": np.array([s.total_s for s in samples], dtype=float),
        "seq_s": np.array([s.seq_decode_s for s in samples], dtype=float),
        "seq_tokens": np.array([s.seq_decode_tokens for s in samples], dtype=float),
    }


def _tokens_per_s(m: BatchMeasured) -> float:
    return sum(s.tokens for s in m.samples) / sum(s.total_s for s in m.samples)


def _seq_tpot_ms(m: BatchMeasured) -> float:
    tokens = sum(s.seq_decode_tokens for s in m.samples)
    return 1e3 * sum(s.seq_decode_s for s in m.samples) / tokens if tokens else math.nan


def _decode_tpot_ms(m: BatchMeasured) -> float:
    """The batch's decode time (after its first token) per decode token: what the trace prices."""
    tokens = sum(s.seq_decode_tokens for s in m.samples)
    return 1e3 * sum(s.total_s - s.prefill_s for s in m.samples) / tokens if tokens else math.nan


def batch_metrics(
    full: BatchMeasured,
    mine: BatchMeasured,
    seed: int = 0,
    profile: CostProfile | None = None,
    mode: str = "full",
    metric: str | None = None,
) -> dict:
    """``mine`` against ``full`` at one batch size: throughput and per-sequence speedups with paired
    bootstrap intervals, tokens/s, time per token, FLOPs, equal outputs; priced with ``profile``."""
    b, m = _arrays(full.samples), _arrays(mine.samples)
    thr = ratio_interval(b["tokens"], b["total_s"], m["tokens"], m["total_s"], seed=seed)
    seq = ratio_interval(m["seq_s"], m["seq_tokens"], b["seq_s"], b["seq_tokens"], seed=seed)
    full_tokens, my_tokens = full.decode_tokens, mine.decode_tokens
    out = {
        "throughput_speedup": thr[0],
        "throughput_speedup_ci_low": thr[1],
        "throughput_speedup_ci_high": thr[2],
        "seq_speedup": seq[0],
        "seq_speedup_ci_low": seq[1],
        "seq_speedup_ci_high": seq[2],
        "tokens_per_s": _tokens_per_s(mine),
        "full_tokens_per_s": _tokens_per_s(full),
        "seq_tpot_ms": _seq_tpot_ms(mine),
        "full_seq_tpot_ms": _seq_tpot_ms(full),
        "timing_samples": len(mine.samples),
        "outputs_equal_full": mine.ids == full.ids,
        "flops_ratio": (mine.flops / my_tokens) / (full.flops / full_tokens)
        if my_tokens and full_tokens and full.flops
        else math.nan,
    }
    if mine.drafted:
        out["acceptance_rate"] = mine.accepted / mine.drafted
    if profile is not None and my_tokens and full_tokens and mine.trace.passes and full.trace.passes:
        predicted = predict(mine.trace, my_tokens, profile, mode, metric)["tpot_ms"]
        full_predicted = predict(full.trace, full_tokens, profile, "full", None)["tpot_ms"]
        out["predicted_tpot_ms"] = predicted
        out["prediction_error"] = predicted / _decode_tpot_ms(mine) - 1
        out["predicted_speedup"] = full_predicted / predicted
        out["full_prediction_error"] = full_predicted / _decode_tpot_ms(full) - 1
    return out
