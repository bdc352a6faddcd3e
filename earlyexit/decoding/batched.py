"""Batched decoding: the factory's strategies over a `BatchedExitEngine`, B prompts at a time.

`generate_batch(strategy, adapter_or_engine, prompts, settings)` decodes every prompt as
``strategy.generate`` would alone, token for token and exit for exit (each sequence's own exits,
drafts, acceptance and rollback; its ids cut by `Run.emit` itself: budget, EOS included, stop
strings), while the passes are shared: one batched pass feeds every live sequence, and sequences
that finish leave the batch.

- ``full``: every live sequence feeds its last token each pass, at full depth.
- ``early-exit`` (``kv`` fill, propagate or skip): the same, with the policy; at each exit layer
  the sequences whose token exits leave the pass (their heads decided in one call, one head
  matmul for all of them) and the rest go on as a smaller batch.
- ``layerskip``, ``dssd``, ``del``: rounds in step. Each round every live sequence drafts (one
  draft per pass, with its own policy and budget; DEL's planner per sequence); a sequence whose
  drafting ended waits until no sequence can draft, then *one* verification pass runs every
  waiting sequence's last token at full depth, which carries its pending drafts and verifies them.
  A pass in which no head fires for a sequence (DSSD's full-model token) is that sequence's
  verification, as alone. Acceptance, rollback and emission are per sequence, exactly
  `speculative_generate`'s. Waiting costs the waiting sequences passes (latency); in exchange
  the deep layers run once for all their verifications (LayerSkip's fixed draft length keeps every
  sequence in step, so all of them verify in the same pass).

One prompt takes today's path unchanged: ``strategy.generate(engine, prompt, settings)`` on an
`ExitEngine` (the one given, or ``engine_for(strategy, adapter)``: pass an engine to reuse it
across calls, as the harness does), so batch 1 is never slower than before; a `BatchedExitEngine`
given with one prompt decodes it batched.

Exactness: each sequence's output equals its batch-1 output (tested in float64). A batched pass
runs other kernels than a batch-1 pass (more rows, a masked padded width) whose results may differ
in the last bits, so, as with verification against decoding (docs/engine.md, "Lossless in half
precision"), where two logits or a confidence score and its threshold lie within that rounding of
each other the two can part: negligible in float32 and float64, possible in float16/bfloat16.

Results: per sequence a `DecodeResult` whose stats hold its tokens, passes, exits, drafts and
acceptance, time to its first token and to its finish (from the batch's start); its ``trace`` and
``flops`` stay empty, since a pass's work is shared. The batch's work (decode passes' trace and
FLOPs, heads included) and its total time are in `BatchResult`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from earlyexit.decoding.base import (
    DecodeResult,
    DecodeSettings,
    DecodeStats,
    Run,
    Strategy,
    engine_for,
    greedy,
    kv_of,
)
from earlyexit.decoding.dssd import DSSDDecoding
from earlyexit.decoding.dynamic_exit import DELDecoding, _Planner
from earlyexit.decoding.early_exit import EarlyExitDecoding
from earlyexit.decoding.full import FullDecoding
from earlyexit.decoding.layerskip import LayerSkipDecoding
from earlyexit.decoding.speculative import count_acceptance
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.batched_engine import GRAPHS_REFUSED, BatchedExitEngine, BatchPassTrace, BatchStep
from earlyexit.model.device import synchronize
from earlyexit.model.engine import ExitCheck, ExitEngine
from earlyexit.model.trace import TraceCounts

__all__ = ["BatchResult", "batched_engine_for", "generate_batch", "per_prompt_settings"]

BATCHED_MODES = (FullDecoding, EarlyExitDecoding, LayerSkipDecoding, DSSDDecoding, DELDecoding)


@dataclass
class BatchResult:
    """A batch's per-sequence results and the batch's shared work and time.

    ``exits`` lists, per sequence, the exit layer of each of its decode passes (None on the
    batch-1 path, which does not record them). ``trace``/``flops`` are the decode passes' (not the
    prefill's) as `DecodeStats` counts them, padding rows included; ``passes`` the same passes one
    by one (`BatchPassTrace`, which says how many rows were padding; empty on the batch-1 path);
    ``forward_passes`` counts the batch's passes, prefill included. Each sequence's
    ``stats.ttft_s``/``stats.total_s`` run from the batch's start.
    """

    results: list[DecodeResult]
    total_s: float
    forward_passes: int
    trace: TraceCounts
    flops: int
    exits: list[list[int]] | None = None
    exit_histogram: Counter = field(default_factory=Counter)
    passes: list[BatchPassTrace] = field(default_factory=list)

    @property
    def ids(self) -> list[list[int]]:
        return [r.ids for r in self.results]

    @property
    def tokens(self) -> int:
        return sum(len(r.ids) for r in self.results)

    @property
    def drafted(self) -> int:
        return sum(r.stats.drafted for r in self.results)

    @property
    def accepted(self) -> int:
        return sum(r.stats.accepted for r in self.results)

    @property
    def verifications(self) -> int:
        return sum(r.stats.verifications for r in self.results)

    @property
    def padding_layer_rows(self) -> int:
        """Layer x row computations of padding rows (in ``trace.layer_rows``, done for no sequence)."""
        return sum(s.layers * s.padding_rows for p in self.passes for s in p.segments)

    @property
    def first_token_s(self) -> list[float]:
        return [r.stats.ttft_s for r in self.results]

    @property
    def finish_s(self) -> list[float]:
        return [r.stats.total_s for r in self.results]


def generate_batch(
    strategy: Strategy,
    adapter_or_engine: ModelAdapter | ExitEngine | BatchedExitEngine,
    prompts: Sequence[torch.Tensor],
    settings: DecodeSettings | Sequence[DecodeSettings],
) -> BatchResult:
    """Decode `prompts` with `strategy`, all together; each sequence's output is its batch-1 output.

    ``settings``: one for every prompt, or one per prompt (a workload's prompts each have their own
    budget and stops).

    An adapter gets an engine built for the batch (`batched_engine_for`; `engine_for` for one
    prompt); an `ExitEngine` decodes one prompt as today and lends its settings to a batched engine
    for more; a `BatchedExitEngine` is used as is. Refused before decoding: no prompts, an empty
    prompt, a prompt that leaves no room in the context, more prompts than the engine holds, an
    engine built for another strategy, CUDA graphs with more than one prompt, a mode with no
    batched version.
    """
    prompts = [torch.as_tensor(p).reshape(-1) for p in prompts]
    if not prompts:
        raise ValueError("empty batch: give at least one prompt")
    settings = per_prompt_settings(settings, len(prompts))
    if not isinstance(strategy, BATCHED_MODES):
        names = ", ".join(m.name for m in BATCHED_MODES)
        raise ValueError(f"mode {strategy.name!r} has no batched decoding; batched modes: {names}")
    if len(prompts) == 1 and not isinstance(adapter_or_engine, BatchedExitEngine):
        engine = adapter_or_engine
        if not isinstance(engine, ExitEngine):
            engine = engine_for(strategy, adapter_or_engine)
        return _single(strategy.generate(engine, prompts[0], settings[0]))
    engine = _batched_engine(strategy, adapter_or_engine, prompts, settings)
    _check_batch(strategy, engine, prompts, settings)
    return _decode(strategy, engine, prompts, settings)


def per_prompt_settings(
    settings: DecodeSettings | Sequence[DecodeSettings], prompts: int
) -> list[DecodeSettings]:
    """One settings for every prompt, or one per prompt; refused when the count differs."""
    out = [settings] * prompts if isinstance(settings, DecodeSettings) else list(settings)
    if len(out) != prompts:
        raise ValueError(f"{len(out)} settings for {prompts} prompts: give one, or one per prompt")
    return out


def batched_engine_for(
    strategy: Strategy, adapter: ModelAdapter, batch_size: int, max_len: int | None = None
) -> BatchedExitEngine:
    """A batched engine whose segments end at the strategy's exit layers and that keeps K/V its way."""
    return BatchedExitEngine(adapter, strategy.exit_layers, batch_size, max_len, kv_of(strategy))


def _batched_engine(strategy, given, prompts, settings) -> BatchedExitEngine:
    """The engine given, or one sized for the batch: with the context batch 1 would decode in, each
    sequence's budget is batch 1's, and no slot is longer than the longest prompt plus its budget."""
    if isinstance(given, BatchedExitEngine):
        return given
    if isinstance(given, ExitEngine):
        if given.graphs is not None:
            raise ValueError(GRAPHS_REFUSED)
        adapter, context = given.adapter, given.max_len
    else:
        adapter, context = given, given.max_positions
    longest = max(p.numel() for p in prompts)
    max_len = min(context, longest + max(max(s.max_new_tokens for s in settings), 1))
    return batched_engine_for(strategy, adapter, len(prompts), max_len)


def _check_batch(strategy, engine: BatchedExitEngine, prompts, settings) -> None:
    """Clear errors before any decoding starts (`check_inputs`, per sequence, plus the batch's size)."""
    kv = kv_of(strategy)
    if engine.kv != kv:
        raise ValueError(
            f"the engine keeps exited tokens' K/V by {engine.kv!r} but the mode needs {kv!r}; "
            "build it with batched_engine_for(strategy, adapter, batch_size)"
        )
    missing = sorted(set(strategy.exit_layers) - set(engine.exit_layers))
    if missing:
        raise ValueError(
            f"the engine's segments do not end at exit layers {missing} (engine exit layers: "
            f"{engine.exit_layers}); build it with batched_engine_for(strategy, adapter, batch_size)"
        )
    if len(prompts) > engine.batch_size:
        raise ValueError(
            f"a batch of {len(prompts)} sequences does not fit the KV cache of {engine.batch_size} "
            f"sequences x {engine.max_len} tokens"
        )
    for i, prompt in enumerate(prompts):
        if prompt.numel() == 0:
            raise ValueError(f"empty prompt {i}: give at least one token")
        if prompt.numel() >= engine.max_len:
            raise ValueError(
                f"prompt {i} of {prompt.numel()} tokens leaves no room in the KV cache's context of "
                f"{engine.max_len} tokens per sequence"
            )
    for i, s in enumerate(settings):
        if s.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {s.max_new_tokens} (prompt {i})")


def _single(result: DecodeResult) -> BatchResult:
    """Batch 1's result as a batch: its own time, passes and work."""
    stats = result.stats
    return BatchResult(
        [result],
        stats.total_s,
        stats.forward_passes,
        stats.trace,
        stats.flops,
        None,
        Counter(stats.exit_histogram),
    )


def _decode(strategy, engine: BatchedExitEngine, prompts, settings) -> BatchResult:
    """The strategy's own policy, heads and draft budget, driven batched (module docstring)."""
    if isinstance(strategy, FullDecoding):
        batch = _Batch(engine, prompts, settings, None)
        batch.prefill()
        _in_step(batch, None)
    elif isinstance(strategy, EarlyExitDecoding):
        batch = _Batch(engine, prompts, settings, strategy.heads)
        batch.prefill()
        _in_step(batch, PolicyRows(strategy.policy))
    elif isinstance(strategy, DELDecoding):
        return _decode_del(strategy, engine, prompts, settings)
    else:
        if isinstance(strategy, LayerSkipDecoding):
            check, max_draft = ExitAt(strategy.heads, strategy.exit_layer), strategy.draft_length
        else:
            check, max_draft = PolicyRows(strategy.policy), strategy.max_draft
        batch = _Batch(engine, prompts, settings, strategy.heads)
        batch.prefill()
        _rounds(batch, lambda seq: (check, max_draft))
    return batch.finish()


def _decode_del(strategy: DELDecoding, engine: BatchedExitEngine, prompts, settings) -> BatchResult:
    """DEL: one planner per sequence (its statistics and choices are the sequence's own), fed by the
    engine's tap; the prefill unembeds the prompt rows its statistics start from. The planner is
    DEL's own (`dynamic_exit._Planner`), so batched DEL follows the very rules batch 1 does."""
    planners = {i: _Planner(strategy, _SequenceView(engine, i)) for i in range(len(prompts))}
    previous = engine.tap
    engine.tap = lambda seq, layer, positions, hidden: planners[seq].tap(layer, positions, hidden)
    try:
        batch = _Batch(engine, prompts, settings, strategy.heads)
        prefill = batch.prefill(logits_rows=max(1, strategy.context))
        for seq, planner in planners.items():
            planner.prefilled(prefill[seq])
        _rounds(batch, lambda seq: planners[seq].plan(), planners)
        result = batch.finish()
    finally:
        engine.tap = previous
    result.trace.extra_head_rows += sum(p.run.shadow_rows for p in planners.values())
    return result


class _SequenceView:
    """What DEL's planner reads of its engine, for one sequence of a batched engine."""

    def __init__(self, engine: BatchedExitEngine, sequence: int) -> None:
        self.adapter, self._engine, self._sequence = engine.adapter, engine, sequence

    @property
    def length(self) -> int:
        return self._engine.length(self._sequence)


class PolicyRows:
    """A `ThresholdPolicy` that decides many rows in one call: one head matmul for the rows, their
    summaries read back together, each compared with the threshold as `Metric.passes` does."""

    def __init__(self, policy: ThresholdPolicy) -> None:
        self.policy = policy

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        return self.policy(layer, hidden)

    def rows(self, layer: int, hidden: torch.Tensor) -> list[torch.Tensor | None]:
        threshold = self.policy.thresholds.get(layer)
        if threshold is None:
            return [None] * len(hidden)
        metric = self.policy.metric
        logits = self.policy.heads(layer, hidden)
        summaries = metric.summaries(logits).tolist()
        return [
            row if metric.passes(s, threshold) else None for row, s in zip(logits, summaries, strict=True)
        ]


class ExitAt:
    """LayerSkip's draft policy: every draft exits at `layer` (`LayerSkipDecoding._always_exit`), the
    rows of a pass through one head call."""

    def __init__(self, heads: HeadSet, layer: int) -> None:
        self.heads, self.layer = heads, layer

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        return self.heads(layer, hidden) if layer == self.layer else None

    def rows(self, layer: int, hidden: torch.Tensor) -> list[torch.Tensor | None]:
        if layer != self.layer:
            return [None] * len(hidden)
        return list(self.heads(layer, hidden))


class _Sequence(Run):
    """One sequence's bookkeeping. It reuses `Run`'s `emit`, `done` and `remaining`, so its ids are
    cut exactly as batch 1 cuts them; it does not call `Run.__init__`, which owns an `ExitEngine`."""

    def __init__(
        self, prompt: torch.Tensor, settings: DecodeSettings, max_len: int, clock, start: float
    ) -> None:
        self.prompt, self.settings = prompt, settings
        self.budget = min(settings.max_new_tokens, max_len - prompt.numel())
        self.ids: list[int] = []
        self.stopped = False
        self.stats = DecodeStats()
        self.exits: list[int] = []
        self._clock, self._start = clock, start

    def _now(self) -> float:
        return self._clock()


class _Batch:
    """The batch's bookkeeping: sequences, the live set, passes, timing; `finish` builds the result."""

    def __init__(
        self, engine: BatchedExitEngine, prompts, settings: list[DecodeSettings], heads: HeadSet | None
    ):
        self.engine, self.prompts, self.heads = engine, prompts, heads
        self._head_flops0 = heads.flops if heads is not None else 0
        self._traces: list[BatchPassTrace] = []
        self._passes = 0
        self._start = self._now()
        pairs = zip(prompts, settings, strict=True)
        self.seqs = [_Sequence(p, s, engine.max_len, self._now, self._start) for p, s in pairs]
        self.live: list[int] = []

    def _now(self) -> float:
        synchronize(self.engine.adapter.device)
        return time.perf_counter()

    def prefill(self, logits_rows: int = 1) -> BatchStep:
        step = self.engine.start(self.prompts, logits_rows=logits_rows)
        self._passes += 1
        self.live = list(range(len(self.seqs)))
        for i, seq in enumerate(self.seqs):
            seq.stats.forward_passes += 1
            seq.emit([greedy(step[i].logits)])
        self.settle()
        return step

    def forward(self, feeds: dict[int, int], checks: dict[int, ExitCheck] | None = None) -> BatchStep:
        step = self.engine.forward(feeds, checks)
        self._passes += 1
        self._traces.append(step.trace)
        for s in feeds:
            self.seqs[s].stats.forward_passes += 1
            self.seqs[s].exits.append(step[s].exit_layer)
        return step

    def settle(self) -> None:
        """Finished sequences leave the batch (their finish time is taken now)."""
        for s in [s for s in self.live if self.seqs[s].done]:
            self.seqs[s].stats.total_s = self._now() - self._start
            self.engine.release(s)
            self.live.remove(s)

    def finish(self) -> BatchResult:
        total = self._now() - self._start
        trace, flops = TraceCounts(), 0
        for t in self._traces:
            trace.add(t)
            flops += self.engine.flops_of(t)
        if self.heads is not None:
            flops += self.heads.flops - self._head_flops0
        results, histogram = [], Counter()
        for seq in self.seqs:
            seq.stats.tokens = len(seq.ids)
            seq.stats.exit_histogram = Counter(seq.exits)
            histogram.update(seq.exits)
            results.append(DecodeResult(seq.ids, seq.stats))
        exits = [seq.exits for seq in self.seqs]
        return BatchResult(results, total, self._passes, trace, flops, exits, histogram, self._traces)


def _in_step(batch: _Batch, check: ExitCheck | None) -> None:
    """full / early-exit: every live sequence feeds its last token each pass."""
    while batch.live:
        checks = None if check is None else dict.fromkeys(batch.live, check)
        step = batch.forward({s: batch.seqs[s].ids[-1] for s in batch.live}, checks)
        for s in list(batch.live):
            batch.seqs[s].emit([greedy(step[s].logits)])
        batch.settle()


@dataclass
class _Round:
    """One sequence's draft round (`speculative_generate`'s loop variables)."""

    check: ExitCheck
    base: int  # position of the last emitted token, not yet in the cache
    limit: int
    token: int
    drafts: list[int] = field(default_factory=list)


def _rounds(batch: _Batch, plan, planners: dict | None = None) -> None:
    """Draft-and-verify in rounds: every live sequence drafts, those done drafting wait, then one
    verification pass for all of them (module docstring)."""
    engine = batch.engine
    while batch.live:
        rounds = {}
        for s in batch.live:
            check, max_draft = plan(s)
            seq = batch.seqs[s]
            rounds[s] = _Round(check, engine.length(s), min(max_draft, seq.remaining), seq.ids[-1])
        drafting, waiting = set(rounds), set()
        while drafting or waiting:
            checks = {}
            for s in sorted(drafting):
                r = rounds[s]
                if len(r.drafts) < r.limit and r.token != batch.seqs[s].settings.eos_token_id:
                    checks[s] = r.check
                else:
                    drafting.discard(s)
                    waiting.add(s)
            feeds = sorted(checks) if checks else sorted(waiting)
            if not checks:
                waiting.clear()
            step = batch.forward({s: rounds[s].token for s in feeds}, checks or None)
            for s in feeds:
                out, r = step[s], rounds[s]
                if out.final_logits is not None:
                    drafting.discard(s)
                    _verify(batch, s, r, out, s in checks, planners[s] if planners else None)
                    continue
                r.token = greedy(out.logits)
                r.drafts.append(r.token)
                if planners is not None and planners[s].stop_drafting():
                    r.limit = len(r.drafts)
        batch.settle()


def _verify(batch: _Batch, s: int, r: _Round, out, may_draft: bool, planner) -> None:
    """`speculative_generate`'s verification, for sequence `s`: greedy prefix match, statistics,
    rollback of the rejected drafts, emission, and (DEL) what the round taught the planner."""
    seq = batch.seqs[s]
    # Row i of the final logits sits at position base + i and predicts the next token.
    assert out.final_positions[0] == r.base and len(out.final_positions) == len(r.drafts) + 1
    targets = out.final_logits.argmax(-1).tolist()
    drafts = r.drafts
    accepted = count_acceptance(seq.stats, drafts, targets, may_draft)
    batch.engine.truncate(s, r.base + accepted + 1)
    seq.emit([*drafts[:accepted], targets[accepted]])
    if planner is not None and not seq.done:
        planner.observe(r.base, drafts, targets, accepted)
