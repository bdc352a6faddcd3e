"""One small interface for every decoding mode: prompt ids + settings -> ids + statistics.

Every mode runs on `ExitEngine` (the layer loop with exits and the exact KV cache), so
modes differ only in which exits they allow and how they verify, never in the model code.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import torch

from earlyexit.decoding.stops import StopCheck
from earlyexit.exits.heads import HeadSet
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.device import synchronize
from earlyexit.model.engine import ExitEngine, StepOutput
from earlyexit.model.trace import PassTrace, TraceCounts


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 64
    eos_token_id: int | None = None  # stop after emitting it (it is included in the output)
    stop: StopCheck | None = None  # stop strings/patterns, checked as each token is emitted


@dataclass
class DecodeStats:
    """What a run did; rates are derived so they can never disagree with the counts."""

    tokens: int = 0
    forward_passes: int = 0
    drafted: int = 0  # head drafts only
    accepted: int = 0
    verifications: int = 0
    # Passes where drafting was still allowed but no head fired, so the token came from the full
    # model: the public DSSD demo appends such a token to its drafts (DESIGN.md, "The public DSSD
    # demo, read closely"); it is accepted there when every head draft before it was.
    full_model_drafts: int = 0
    full_model_drafts_accepted: int = 0
    flops: int = 0  # decode passes (not prefill): analytic FLOPs of layers, attention, unembedding, heads
    exit_histogram: Counter = field(default_factory=Counter)  # exit layer -> passes
    trace: TraceCounts = field(default_factory=TraceCounts)  # decode passes' work, as counts
    # A draft model's decode passes (the `assisted` baseline): another model, priced with its own profile.
    draft_trace: TraceCounts = field(default_factory=TraceCounts)
    ttft_s: float = 0.0
    total_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def acceptance_rate_demo(self) -> float:
        """Acceptance as the DSSD demo counts it: full-model tokens count as drafts."""
        return demo_acceptance(
            self.accepted, self.drafted, self.full_model_drafts_accepted, self.full_model_drafts
        )

    @property
    def accepted_per_verification(self) -> float:
        return self.accepted / self.verifications if self.verifications else float("nan")

    @property
    def layer_rows(self) -> int:
        """Decode passes (not prefill): sum of layers computed x rows in the pass."""
        return self.trace.layer_rows

    @property
    def layers_per_token(self) -> float:
        """Layers computed per output token after the first (which the prefill produces)."""
        return self.layer_rows / (self.tokens - 1) if self.tokens > 1 else float("nan")

    @property
    def flops_per_token(self) -> float:
        """Analytic FLOPs per output token after the first, rejected drafts included."""
        return self.flops / (self.tokens - 1) if self.tokens > 1 else float("nan")

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first."""
        return (self.total_s - self.ttft_s) / (self.tokens - 1) if self.tokens > 1 else float("nan")

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "forward_passes": self.forward_passes,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "verifications": self.verifications,
            "acceptance_rate": self.acceptance_rate,
            "full_model_drafts": self.full_model_drafts,
            "full_model_drafts_accepted": self.full_model_drafts_accepted,
            "acceptance_rate_demo": self.acceptance_rate_demo,
            "accepted_per_verification": self.accepted_per_verification,
            "layers_per_token": self.layers_per_token,
            "flops_per_token": self.flops_per_token,
            "exit_histogram": dict(sorted(self.exit_histogram.items())),
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s,
            "total_s": self.total_s,
        }


def demo_acceptance(accepted: int, drafted: int, full_accepted: int, full_drafts: int) -> float:
    """(head + full-model drafts accepted) / (head + full-model drafts); NaN with no draft at all."""
    total = drafted + full_drafts
    return (accepted + full_accepted) / total if total else float("nan")


@dataclass
class DecodeResult:
    ids: list[int]
    stats: DecodeStats


class Strategy(Protocol):
    """A decoding mode. `exit_layers` tells the engine where its segments must end."""

    name: str
    kv: str  # how the engine keeps exited tokens' K/V (model.engine.KV_STRATEGIES); absent = fill

    @property
    def exit_layers(self) -> list[int]: ...

    @property
    def heads(self) -> HeadSet | None:
        """The exit heads the mode evaluates (None for `full`)."""
        ...

    def generate(
        self, engine: ExitEngine, prompt: torch.Tensor, settings: DecodeSettings
    ) -> DecodeResult: ...


class Run:
    """Bookkeeping shared by the modes: budget, stop conditions, timing, pass statistics."""

    def __init__(
        self,
        engine: ExitEngine,
        prompt: torch.Tensor,
        settings: DecodeSettings,
        exit_layers: list[int],
        heads: HeadSet | None = None,
        kv: str = "fill",
    ) -> None:
        prompt = torch.as_tensor(prompt).reshape(-1)
        check_inputs(engine, prompt, settings, exit_layers, kv)
        engine.reset()
        self.engine = engine
        self.prompt = prompt
        self.settings = settings
        # Tokens may be generated until the sequence fills the context.
        self.budget = min(settings.max_new_tokens, engine.max_len - prompt.numel())
        self.ids: list[int] = []
        self.stopped = False  # a stop string or pattern was emitted
        self.stats = DecodeStats()
        # (exit layer, trace) per decode pass, aggregated in finish(), after the clock stops:
        # statistics are the harness's bookkeeping, not the decoding's cost.
        self._passes: list[tuple[int, PassTrace]] = []
        self.heads = heads
        self._head_flops0 = heads.flops if heads is not None else 0
        self._start = self._now()

    def _now(self) -> float:
        synchronize(self.engine.adapter.device)
        return time.perf_counter()

    def prefill(self) -> StepOutput:
        """Run the prompt at full depth and emit the first token (time to first token); returns the
        pass (DEL seeds its statistics from its final logits)."""
        out = self.engine.forward(self.prompt)
        self.stats.forward_passes += 1
        self.emit([greedy(out.logits)])
        return out

    def forward(self, ids: torch.Tensor, exit_check=None) -> StepOutput:
        out = self.engine.forward(ids, exit_check)
        self.stats.forward_passes += 1
        self._passes.append((out.exit_layer, out.trace))
        return out

    @property
    def done(self) -> bool:
        eos = self.settings.eos_token_id
        return (
            self.stopped
            or len(self.ids) >= self.budget
            or (eos is not None and bool(self.ids) and self.ids[-1] == eos)
        )

    @property
    def remaining(self) -> int:
        return self.budget - len(self.ids)

    def emit(self, tokens: list[int]) -> None:
        """Append tokens, stopping at EOS, the budget or a stop string (the rest are dropped)."""
        first = not self.ids
        stop = self.settings.stop
        for tok in tokens:
            if self.done:
                break
            self.ids.append(int(tok))
            if stop is not None and stop.hit(self.ids):
                self.stopped = True
        if first and self.ids:
            self.stats.ttft_s = self._now() - self._start

    def finish(self) -> DecodeResult:
        self.stats.total_s = self._now() - self._start
        for exit_layer, trace in self._passes:
            self.stats.exit_histogram[exit_layer] += 1
            self.stats.trace.add(trace)
            self.stats.flops += self.engine.flops_of(trace)
        if self.heads is not None:
            self.stats.flops += self.heads.flops - self._head_flops0
        self.stats.tokens = len(self.ids)
        return DecodeResult(self.ids, self.stats)


def check_inputs(
    engine: ExitEngine,
    prompt: torch.Tensor,
    settings: DecodeSettings,
    exit_layers: list[int],
    kv: str = "fill",
) -> None:
    """Clear errors before any decoding starts."""
    if engine.kv != kv:
        raise ValueError(
            f"the engine keeps exited tokens' K/V by {engine.kv!r} but the mode needs {kv!r}; "
            "build it with engine_for(strategy, adapter)"
        )
    missing = sorted(set(exit_layers) - set(engine.exit_layers))
    if missing:
        raise ValueError(
            f"the engine's segments do not end at exit layers {missing} (engine exit layers: "
            f"{engine.exit_layers}); build it with engine_for(strategy, adapter)"
        )
    if prompt.numel() == 0:
        raise ValueError("empty prompt: give at least one token")
    if prompt.numel() >= engine.max_len:
        raise ValueError(
            f"prompt of {prompt.numel()} tokens leaves no room in the context of {engine.max_len} tokens"
        )
    if settings.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")


def engine_for(strategy: Strategy, adapter: ModelAdapter, **kwargs) -> ExitEngine:
    """An engine whose segments end at the strategy's exit layers and that keeps K/V its way."""
    return ExitEngine(adapter, exit_layers=strategy.exit_layers, kv=kv_of(strategy), **kwargs)


def kv_of(strategy: Strategy) -> str:
    """The strategy's KV rule; one written without the attribute keeps K/V exactly."""
    return getattr(strategy, "kv", "fill")


def greedy(logits: torch.Tensor) -> int:
    return int(logits.argmax(-1))
