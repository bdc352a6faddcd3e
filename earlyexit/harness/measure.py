"""Decoding latency on a fixed prompt set: warm-up excluded, median of repeats, spread kept.

Shared by the runner and scripts/benchmark_decoding.py so both report the same numbers.
Time to first token and time per output token are reported separately (DESIGN.md).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from earlyexit.decoding import DecodeSettings, Strategy
from earlyexit.exits.heads import HeadSet
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import Capture, GraphCache


def prompt_set(stream: torch.Tensor, n: int, length: int, seed: int) -> list[torch.Tensor]:
    """`n` seeded windows of `length` tokens from a held-out stream."""
    if len(stream) <= length:
        raise ValueError(f"held-out stream of {len(stream)} tokens is too short for {length}-token prompts")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - length, (n,), generator=gen).tolist()
    return [stream[s : s + length] for s in starts]


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
    """Generated ids per prompt and aggregate statistics (per-prompt medians over repeats).

    With `graphs` (earlyexit/model/graphs.py) the engine's segments and the strategy's heads are
    replayed as captured graphs. Graphs are captured on first use, so warm-up then decodes
    every prompt once (decoding is deterministic): no capture falls inside a timed call.
    """
    engine = ExitEngine(adapter, exit_layers=strategy.exit_layers, graphs=graphs)
    outputs, runs = [], []
    with _graphed_heads(strategy.heads, graphs) as head_graphs:
        for _ in range(warmup):
            strategy.generate(engine, prompts[0], settings)
        if graphs is not None:
            for prompt in prompts:
                strategy.generate(engine, prompt, settings)
        for prompt in tqdm(prompts, desc=f"benchmark {strategy.name}", disable=not progress):
            results = sorted(
                (strategy.generate(engine, prompt, settings) for _ in range(repeats)),
                key=lambda r: r.stats.total_s,
            )
            median = results[len(results) // 2]
            outputs.append(median.ids)
            runs.append(median.stats)
    tpots = [s.tpot_s for s in runs]
    drafted = sum(s.drafted for s in runs)
    histogram = Counter()
    for s in runs:
        histogram.update(s.exit_histogram)
    decode_tokens = sum(s.tokens - 1 for s in runs)
    return outputs, {
        "tokens": sum(s.tokens for s in runs),
        "tokens_per_s": sum(s.tokens for s in runs) / sum(s.total_s for s in runs),
        "tpot_ms": 1e3 * statistics.median(tpots),
        "tpot_ms_min": 1e3 * min(tpots),
        "tpot_ms_max": 1e3 * max(tpots),
        "ttft_ms": 1e3 * statistics.median(s.ttft_s for s in runs),
        "acceptance_rate": sum(s.accepted for s in runs) / drafted if drafted else float("nan"),
        "accepted_per_verification": (
            sum(s.accepted for s in runs) / v if (v := sum(s.verifications for s in runs)) else float("nan")
        ),
        "layers_per_token": sum(s.layer_rows for s in runs) / decode_tokens
        if decode_tokens
        else float("nan"),
        "flops_per_token": sum(s.flops for s in runs) / decode_tokens if decode_tokens else float("nan"),
        "exit_histogram": dict(sorted(histogram.items())),
        "prompts": len(prompts),
        "repeats": repeats,
        "graphs_captured": len(engine.graphs or ()) + len(head_graphs or ()),
    }


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
