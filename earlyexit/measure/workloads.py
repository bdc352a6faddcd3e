"""Speed, acceptance and quality measured on the same generations, workload by workload.

Each workload's prompts go through `full` and the mode interleaved, exactly as the held-out
benchmark runs (`protocol.measure_interleaved`), each prompt with its own token budget and
stops, checked as tokens are emitted. The texts the timed runs produced are what the workload
scores: the quality beside a speedup is the quality of the very outputs that were timed.

Speedups here are ratios of sums over the samples, not of medians: generations end at their
stops, so some are a handful of tokens long and a per-sample time per token is undefined for
one token. The headline (`speedup`) is end to end, tokens over wall time with the prefill, as
Spec-Bench and LayerSkip report it; `decode_speedup` is the time per output token after the
first. Both come with a paired bootstrap interval over the (repeat, prompt) samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from earlyexit.decoding import DecodeSettings, DecodeStats, StopCheck, Strategy
from earlyexit.measure.divergence import first_divergence
from earlyexit.measure.protocol import BOOTSTRAP_SAMPLES, Measured, measure_interleaved
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.graphs import Capture
from earlyexit.tasks.workload import Scores, Workload

__all__ = [
    "WorkloadResult",
    "mean_accepted_tokens",
    "measure_workload",
    "measured_named",
    "overall_metrics",
    "quality_delta",
    "ratio_interval",
    "workload_metrics",
    "workload_settings",
]

# Strategies whose full-depth passes verify drafts (the baselines' passes of the target model count
# as full-depth passes: measure/baselines.py) and those that emit one token per full pass.
VERIFYING = ("layerskip", "dssd", "del", "assisted", "prompt_lookup", "hf_early_exit")
ONE_PER_PASS = ("full", "hf_generate")


@dataclass
class WorkloadResult:
    """One workload's measurement: per strategy (full first) its samples, the user's texts and scores."""

    workload: Workload
    measured: list[Measured]
    texts: list[list[str]]
    scores: list[Scores]


def workload_settings(
    workload: Workload, decode: Callable[[Sequence[int]], str], eos: int | None
) -> list[DecodeSettings]:
    return [
        DecodeSettings(p.max_new_tokens, eos, StopCheck(p.stop, decode) if p.stop else None)
        for p in workload.prompts
    ]


def user_text(ids: Sequence[int], settings: DecodeSettings, decode: Callable[[Sequence[int]], str]) -> str:
    """What the user gets: the output without EOS, decoded, cut before its first stop."""
    kept = [t for t in ids if t != settings.eos_token_id]
    return settings.stop.text(kept) if settings.stop is not None else decode(kept)


def measure_workload(
    strategies: Sequence[Strategy],
    adapter: ModelAdapter,
    workload: Workload,
    decode: Callable[[Sequence[int]], str],
    eos_token_id: int | None,
    repeats: int = 3,
    warmup: int = 1,
    progress: bool = False,
    graphs: Capture | None = None,
    between: Callable[[int], object] | None = None,
) -> WorkloadResult:
    """Time every strategy on the workload's prompts (interleaved), then score each one's texts."""
    settings = workload_settings(workload, decode, eos_token_id if workload.stop_at_eos else None)
    prompts = [torch.tensor(p.ids) for p in workload.prompts]
    measured = measure_interleaved(
        strategies, adapter, prompts, settings, repeats, warmup, progress, graphs, between,
        desc=f"{workload.name}: " + " vs ".join(s.name for s in strategies),
    )  # fmt: skip
    texts = [[user_text(ids, s, decode) for ids, s in zip(m.ids, settings, strict=True)] for m in measured]
    return WorkloadResult(workload, measured, texts, [workload.score(t) for t in texts])


def _draws(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def ratio_interval(
    base_num: np.ndarray,
    base_den: np.ndarray,
    mode_num: np.ndarray,
    mode_den: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(Σmode_num/Σmode_den) / (Σbase_num/Σbase_den) and its paired bootstrap 95% interval.

    Paired: the same (repeat, prompt) draws on both sides, since they ran side by side.
    """
    n = len(base_num)
    if n == 0 or any(len(a) != n for a in (base_den, mode_num, mode_den)):
        raise ValueError("need paired, non-empty samples")

    def ratio(idx: np.ndarray | slice) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            mode = mode_num[idx].sum(-1) / mode_den[idx].sum(-1)
            base = base_num[idx].sum(-1) / base_den[idx].sum(-1)
            return mode / base

    point = float(ratio(slice(None)))
    boot = ratio(_draws(n, samples, seed))
    boot = boot[np.isfinite(boot)]
    if len(boot) == 0:
        return point, math.nan, math.nan
    low, high = np.quantile(boot, [0.025, 0.975])
    return point, float(low), float(high)


def _arrays(samples: Sequence[DecodeStats]) -> dict[str, np.ndarray]:
    return {
        "tokens": np.array([s.tokens for s in samples], dtype=float),
        "total_s": np.array([s.total_s for s in samples], dtype=float),
        "decode_tokens": np.array([max(0, s.tokens - 1) for s in samples], dtype=float),
        "decode_s": np.array([s.total_s - s.ttft_s for s in samples], dtype=float),
    }


def _speedups(base: Sequence[DecodeStats], mode: Sequence[DecodeStats], seed: int) -> dict[str, float]:
    b, m = _arrays(base), _arrays(mode)
    e2e = ratio_interval(b["tokens"], b["total_s"], m["tokens"], m["total_s"], seed=seed)
    # Time per decode token, the mode's side as the "base": the ratio is full's time per token over
    # the mode's, the decode speedup.
    dec = ratio_interval(m["decode_s"], m["decode_tokens"], b["decode_s"], b["decode_tokens"], seed=seed)
    return {
        "speedup": e2e[0],
        "speedup_ci_low": e2e[1],
        "speedup_ci_high": e2e[2],
        "decode_speedup": dec[0],
        "decode_speedup_ci_low": dec[1],
        "decode_speedup_ci_high": dec[2],
        "timing_samples": len(base),
    }


def mean_accepted_tokens(work: Sequence[DecodeStats], num_layers: int, mode: str) -> float:
    """Spec-Bench's #MAT over one repeat's runs: output tokens after the first per full-depth pass
    (1.0 for `full`).

    Undefined (NaN) for modes without verification (early-exit): their shallow passes emit
    tokens that no full pass checks.
    """
    if mode not in ONE_PER_PASS and mode not in VERIFYING:
        return math.nan
    passes = sum(s.exit_histogram.get(num_layers - 1, 0) for s in work)
    tokens = sum(max(0, s.tokens - 1) for s in work)
    return tokens / passes if passes else math.nan


def quality_delta(
    full: Sequence[float], mode: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Mean per-prompt (mode - full) quality and its paired bootstrap 95% interval over prompts."""
    diff = np.array(mode, dtype=float) - np.array(full, dtype=float)
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        return math.nan, math.nan, math.nan
    boot = diff[_draws(len(diff), samples, seed)].mean(-1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(diff.mean()), float(low), float(high)


def _rate(work: Sequence[DecodeStats], num: str, den: str) -> float:
    d = sum(getattr(s, den) for s in work)
    return sum(getattr(s, num) for s in work) / d if d else math.nan


def measured_named(result: WorkloadResult, name: str) -> Measured:
    """The strategy called ``name`` in the lineup (full is first; the mode and baselines follow)."""
    for m in result.measured:
        if m.name == name:
            return m
    raise ValueError(f"no strategy {name!r} in the lineup {[m.name for m in result.measured]}")


def workload_metrics(result: WorkloadResult, mode: str, num_layers: int, seed: int = 0) -> dict:
    """The record's ``workload.<name>.*`` fields (without the prefix) for strategy ``mode`` against
    `full` (the first strategy): the run's mode, or a baseline of its lineup."""
    wl, base, mine = result.workload, result.measured[0], measured_named(result, mode)
    bs, ms = base.summary(), mine.summary()
    work = mine.first_repeat()
    out: dict = {
        "prompts": len(wl.prompts),
        "domain": wl.domain,
        "source": wl.source,
        "note": wl.note,
        **_speedups(base.samples, mine.samples, seed),
        "tokens_per_s": ms["tokens_per_s"],
        "full_tokens_per_s": bs["tokens_per_s"],
        "ttft_ms": ms["ttft_ms"],
        "full_ttft_ms": bs["ttft_ms"],
        "tpot_ms": ms["tpot_ms_mean"],
        "full_tpot_ms": bs["tpot_ms_mean"],
        "tokens": ms["tokens"],
        # Decode FLOPs per output token against full's: counted from what ran (measure/baselines.py
        # for the baselines, the pass trace for the modes); rejected drafts included.
        "flops_ratio": ms["flops_per_token"] / bs["flops_per_token"] if bs["flops_per_token"] else math.nan,
        "acceptance_rate": ms["acceptance_rate"],
        "acceptance_rate_demo": ms["acceptance_rate_demo"],
        "mean_accepted_tokens": mean_accepted_tokens(work, num_layers, mode),
        "accepted_per_verification": _rate(work, "accepted", "verifications"),
        "outputs_equal_full": mine.ids == base.ids,
    }
    parted = first_divergence(base.ids, mine.ids)
    out["prompts_differing"] = 0 if parted is None else parted.prompts_differing
    if parted is not None:
        out["first_divergence_prompt"], out["first_divergence_position"] = parted.prompt, parted.position
    full_q, mode_q = result.scores[0], result.scores[result.measured.index(mine)]
    for metric in wl.metrics:
        delta = quality_delta(full_q.per_prompt[metric], mode_q.per_prompt[metric], seed=seed)
        out[f"quality.{metric}"] = mode_q.aggregate[metric]
        out[f"quality_full.{metric}"] = full_q.aggregate[metric]
        out[f"quality_delta.{metric}"] = delta[0]
        out[f"quality_delta_ci_low.{metric}"] = delta[1]
        out[f"quality_delta_ci_high.{metric}"] = delta[2]
        out[f"quality_higher_is_better.{metric}"] = wl.higher_is_better.get(metric, True)
    return out


def overall_metrics(results: Sequence[WorkloadResult], mode: str, num_layers: int, seed: int = 0) -> dict:
    """Pooled over every workload's samples: the table's "overall" column."""
    base = [s for r in results for s in r.measured[0].samples]
    mine = [s for r in results for s in measured_named(r, mode).samples]
    work = [s for r in results for s in measured_named(r, mode).first_repeat()]
    speed = _speedups(base, mine, seed)
    keys = ("speedup", "speedup_ci_low", "speedup_ci_high", "decode_speedup", "timing_samples")
    return {
        **{k: speed[k] for k in keys},
        "mean_accepted_tokens": mean_accepted_tokens(work, num_layers, mode),
        "outputs_equal_full": all(measured_named(r, mode).ids == r.measured[0].ids for r in results),
    }
