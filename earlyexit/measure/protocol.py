"""The timing protocol: modes measured interleaved prompt by prompt, speedups with an interval.

Shared by the runner and scripts/benchmark_decoding.py so both report the same numbers.
Why interleaved: measuring `full` first and the mode after lets warm-up, allocator growth and
a burst of load on a shared machine land on one side; alternating the order on every sample
(A B, B A, A B, ...) spreads drift over both. Each (repeat, prompt) is one paired sample, and
the speedup is the ratio of the medians of time per output token, with a paired bootstrap 95%
interval over the samples: an interval that contains 1.0 is reported as `within_noise`.
Time to first token and time per output token are kept apart (DESIGN.md). The cost profile
that prices a run can be measured in rounds between its samples (`interleaved_rounds`), so a
machine that drifts moves the prediction with the measurement.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from earlyexit.data.streams import seeded_windows
from earlyexit.decoding import DecodeSettings, DecodeStats, Strategy, engine_for
from earlyexit.decoding.base import demo_acceptance, kv_of
from earlyexit.exits.heads import HeadSet
from earlyexit.measure.profile import ProfileRounds
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import Capture, GraphCache
from earlyexit.model.trace import TraceCounts

BOOTSTRAP_SAMPLES = 2000


def prompt_set(stream: torch.Tensor, n: int, length: int, seed: int) -> list[torch.Tensor]:
    """`n` seeded windows of `length` tokens from a held-out stream (`data.streams.seeded_windows`)."""
    return seeded_windows(stream, n, length, seed)


@dataclass
class Measured:
    """One mode's timed samples (index = repeat * prompts + prompt) and generated ids per prompt."""

    name: str
    ids: list[list[int]] = field(default_factory=list)
    samples: list[DecodeStats] = field(default_factory=list)
    prompts: int = 0
    graphs_captured: int = 0

    @property
    def tpot_s(self) -> np.ndarray:
        return np.array([s.tpot_s for s in self.samples])

    def first_repeat(self) -> list[DecodeStats]:
        """Decoding is deterministic: one repeat per prompt holds all the work counts."""
        return self.samples[: self.prompts]

    def summary(self) -> dict:
        """Aggregate statistics: timings over every sample, work counts over one repeat."""
        runs, work = self.samples, self.first_repeat()
        tpots = [s.tpot_s for s in runs]
        drafted = sum(s.drafted for s in work)
        full_drafts = sum(s.full_model_drafts for s in work)
        full_accepted = sum(s.full_model_drafts_accepted for s in work)
        verifications = sum(s.verifications for s in work)
        decode_tokens = sum(s.tokens - 1 for s in work)
        histogram, trace, draft_trace = Counter(), TraceCounts(), TraceCounts()
        for s in work:
            histogram.update(s.exit_histogram)
            trace.update(s.trace)
            draft_trace.update(s.draft_trace)
        decode_s = sum(s.total_s - s.ttft_s for s in runs)

        def per_token(count: float) -> float:
            return count / decode_tokens if decode_tokens else float("nan")

        return {
            "tokens": sum(s.tokens for s in work),
            "decode_tokens": decode_tokens,
            "tokens_per_s": sum(s.tokens for s in runs) / sum(s.total_s for s in runs),
            "tpot_ms": 1e3 * statistics.median(tpots),
            "tpot_ms_mean": 1e3 * decode_s / max(1, sum(s.tokens - 1 for s in runs)),
            "tpot_ms_min": 1e3 * min(tpots),
            "tpot_ms_max": 1e3 * max(tpots),
            "ttft_ms": 1e3 * statistics.median(s.ttft_s for s in runs),
            # Head drafts only; and as the public DSSD demo counts (full-model tokens as drafts).
            "acceptance_rate": sum(s.accepted for s in work) / drafted if drafted else float("nan"),
            "acceptance_rate_demo": demo_acceptance(
                sum(s.accepted for s in work), drafted, full_accepted, full_drafts
            ),
            "full_model_drafts": full_drafts,
            "accepted_per_verification": (
                sum(s.accepted for s in work) / verifications if verifications else float("nan")
            ),
            "layers_per_token": per_token(trace.layer_rows),
            "flops_per_token": per_token(sum(s.flops for s in work)),
            "heads_evaluated_per_token": per_token(trace.heads_evaluated),
            "passes_per_token": per_token(trace.passes),
            "exit_histogram": dict(sorted(histogram.items())),
            "trace": trace.to_json(),
            **({"draft_trace": draft_trace.to_json()} if draft_trace.passes else {}),
            "prompts": self.prompts,
            "repeats": len(runs) // max(1, self.prompts),
            "graphs_captured": self.graphs_captured,
        }


def measure_interleaved(
    strategies: Sequence[Strategy],
    adapter: ModelAdapter,
    prompts: list[torch.Tensor],
    settings: DecodeSettings | Sequence[DecodeSettings],
    repeats: int = 3,
    warmup: int = 1,
    progress: bool = False,
    graphs: Capture | None = None,
    between: Callable[[int], object] | None = None,
    desc: str | None = None,
) -> list[Measured]:
    """Every strategy on every prompt, `repeats` times, in alternating order per sample.

    ``settings`` is one for all prompts or one per prompt (a workload's prompts each have their
    own token budget and stops).

    Warm-up is untimed: each strategy decodes the first prompt `warmup` times, and with
    `graphs` (earlyexit/model/graphs.py) every prompt once, so no graph capture falls inside
    a timed call. Sample j = repeat * len(prompts) + prompt runs the strategies in order when
    j is even and in reverse when odd (A B B A ... for two). `between(j)` runs after sample j,
    outside every timed call: the cost profile's rounds go there (`interleaved_rounds`), so
    they see the machine the samples saw; when it returns True, every strategy decodes the next
    prompt once, untimed, before sample j + 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    per_prompt = [settings] * len(prompts) if isinstance(settings, DecodeSettings) else list(settings)
    if len(per_prompt) != len(prompts):
        raise ValueError(f"{len(per_prompt)} settings for {len(prompts)} prompts")
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ValueError(f"strategies must have distinct names, got {names}")
    # Strategies with the same exit layers and KV strategy share one engine (its state is reset per
    # prompt), so equal work runs on the very same buffers: separate KV buffers alone shifted
    # timings by ±5%.
    shared: dict[tuple, ExitEngine] = {}
    for s in strategies:
        key = (tuple(sorted(s.exit_layers)), kv_of(s))
        if key not in shared:
            shared[key] = engine_for(s, adapter, graphs=graphs)
    engines = [shared[tuple(sorted(s.exit_layers)), kv_of(s)] for s in strategies]
    out = [Measured(s.name, prompts=len(prompts)) for s in strategies]
    with ExitStack() as stack:
        head_graphs = [stack.enter_context(_graphed_heads(s.heads, graphs)) for s in strategies]
        for strategy, engine in zip(strategies, engines, strict=True):
            for _ in range(warmup):
                strategy.generate(engine, prompts[0], per_prompt[0])
            if graphs is not None:
                for prompt, setting in zip(prompts, per_prompt, strict=True):
                    strategy.generate(engine, prompt, setting)
        order = list(range(len(strategies)))
        desc = desc or "benchmark " + " vs ".join(names)
        for j in tqdm(range(repeats * len(prompts)), desc=desc, disable=not progress):
            prompt, setting = prompts[j % len(prompts)], per_prompt[j % len(prompts)]
            for k in order if j % 2 == 0 else order[::-1]:
                result = strategies[k].generate(engines[k], prompt, setting)
                out[k].samples.append(result.stats)
                if j < len(prompts):
                    out[k].ids.append(result.ids)
            if between is not None and between(j) and j + 1 < repeats * len(prompts):
                # Whatever ran in between (profile rounds) left caches and allocator cold: one
                # untimed decode per strategy before the next timed sample.
                nxt = (j + 1) % len(prompts)
                for strategy, engine in zip(strategies, engines, strict=True):
                    strategy.generate(engine, prompts[nxt], per_prompt[nxt])
    for m, engine, cache in zip(out, engines, head_graphs, strict=True):
        m.graphs_captured = len(engine.graphs or ()) + len(cache or ())
    return out


def interleaved_rounds(
    rounds: ProfileRounds, samples: int, wanted: int, blocks: int = 1, progress: bool = False
) -> Callable[[int], bool]:
    """A `between` hook that times `wanted` profile rounds in `blocks` blocks spread evenly over
    `samples` samples, the last after the last sample; True after a block (the caller re-warms).
    With `progress`, a block shows its own bar under the benchmark's (on a large model on a CPU
    a block takes minutes, and the benchmark's bar would seem stuck).

    Why blocks and not a round after every sample: a decode right after a round ran 6–23%
    slower on a 2-core CPU (its caches and allocator left cold), so rounds in every gap would
    slow the very samples they price; a few blocks, each followed by an untimed decode, track
    the machine's drift (minutes) without touching the samples (BENCHMARKS.md).
    """
    if samples < 1 or wanted < 1 or blocks < 1:
        raise ValueError(f"samples, wanted rounds and blocks must be >= 1, got {samples}, {wanted}, {blocks}")
    blocks = min(blocks, samples)
    ends = [(i + 1) * samples // blocks - 1 for i in range(blocks)]
    due = {end: (i + 1) * wanted // blocks - i * wanted // blocks for i, end in enumerate(ends)}

    def after(j: int) -> bool:
        if due.get(j, 0) == 0:
            return False
        for _ in tqdm(range(due[j]), desc="cost profile", leave=False, disable=not progress):
            rounds.run(1)
        return True

    return after


def speedup_interval(
    baseline: Measured, mode: Measured, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> dict:
    """Ratio of median time per output token (baseline / mode) and its paired bootstrap 95% interval.

    The resampling draws whole (repeat, prompt) samples, the same draws for both sides, since
    the two were measured side by side.
    """
    base, other = baseline.tpot_s, mode.tpot_s
    if len(base) != len(other) or len(base) == 0:
        raise ValueError(f"need paired samples, got {len(base)} and {len(other)}")
    # A one-token output (a generation that stopped at once) has no time per output token: the
    # pair is left out of the ratio of medians (workload speedups count it: measure/workloads.py).
    finite = np.isfinite(base) & np.isfinite(other)
    base, other = base[finite], other[finite]
    if len(base) == 0:
        nan = float("nan")
        return {"speedup": nan, "speedup_ci_low": nan, "speedup_ci_high": nan, "within_noise": True,
                "timing_samples": 0}  # fmt: skip
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(base), size=(samples, len(base)))
    ratios = np.median(base[draws], axis=1) / np.median(other[draws], axis=1)
    low, high = (float(v) for v in np.quantile(ratios, [0.025, 0.975]))
    return {
        "speedup": float(np.median(base) / np.median(other)),
        "speedup_ci_low": low,
        "speedup_ci_high": high,
        "within_noise": bool(low <= 1.0 <= high),
        "timing_samples": len(base),
    }


def measure_decoding(
    strategy: Strategy,
    adapter: ModelAdapter,
    prompts: list[torch.Tensor],
    settings: DecodeSettings,
    repeats: int = 3,
    warmup: int = 1,
    progress: bool = False,
    graphs: Capture | None = None,
) -> tuple[list[list[int]], dict]:
    """One strategy alone (no baseline): generated ids per prompt and its summary statistics."""
    (measured,) = measure_interleaved(
        [strategy], adapter, prompts, settings, repeats, warmup, progress, graphs
    )
    return measured.ids, measured.summary()


@contextmanager
def _graphed_heads(heads: HeadSet | None, graphs: Capture | None) -> Iterator[GraphCache | None]:
    """Heads replay graphs inside the block only, so the same HeadSet can be timed eager after."""
    if heads is None or graphs is None:
        yield None
        return
    previous, heads.graphs = heads.graphs, GraphCache(graphs)
    try:
        yield heads.graphs
    finally:
        heads.graphs = previous
