"""The speedup's bootstrap is paired: samples measured side by side are resampled together.

On a machine whose speed drifts (load comes and goes), `full` and the mode, measured one right
after the other, drift together. A mode 5% faster on every sample is then a clear speedup:
resampling each (repeat, prompt) pair as a whole keeps the drift out of the ratio. Resampling
the two sides independently mixes a slow moment of one with a fast moment of the other, and
the interval straddles 1.0 (about [0.83, 1.32] here): that bootstrap would call a real 5%
speedup noise. Synthetic samples, no timing.
"""

from __future__ import annotations

import numpy as np

from earlyexit.decoding import DecodeStats
from earlyexit.measure.protocol import BOOTSTRAP_SAMPLES, Measured, speedup_interval

TOKENS = 11  # per sample: 10 decode tokens after the first


def measured(name: str, tpots_s: np.ndarray) -> Measured:
    """A mode's samples with the given time per output token (seconds)."""
    samples = []
    for t in tpots_s:
        s = DecodeStats(tokens=TOKENS)
        s.ttft_s, s.total_s = 0.0, (TOKENS - 1) * float(t)
        samples.append(s)
    return Measured(name, samples=samples, prompts=len(samples))


def drifting_pair(n: int = 40, gap: float = 1.05, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(full, mode) time per token over `n` paired samples: a machine speed that wanders and
    jumps under bursts of load, shared by both sides of a pair, times a small noise of each
    side's own; the mode is `gap` times faster on every sample."""
    gen = np.random.default_rng(seed)
    walk = np.cumsum(gen.normal(0.0, 0.04, n))
    bursts = gen.choice([0.0, 0.3], n, p=[0.8, 0.2])
    machine = 0.010 * np.exp(walk + bursts)
    full = machine * (1 + gen.normal(0.0, 0.004, n))
    mode = machine / gap * (1 + gen.normal(0.0, 0.004, n))
    return full, mode


def unpaired_interval(full: np.ndarray, mode: np.ndarray, samples: int = BOOTSTRAP_SAMPLES) -> np.ndarray:
    """The 95% interval of the ratio of medians with each side resampled on its own: the wrong
    bootstrap, to show the samples are ones where pairing decides the answer."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, len(full), size=(samples, len(full)))
    b = rng.integers(0, len(mode), size=(samples, len(mode)))
    return np.quantile(np.median(full[a], axis=1) / np.median(mode[b], axis=1), [0.025, 0.975])


def test_drift_shared_by_both_sides_stays_out_of_a_five_percent_speedup():
    full, mode = drifting_pair()
    # The premise: the machine's drift (>2x between samples) dwarfs the 5% gap, and an
    # unpaired bootstrap of these very samples cannot tell the mode from `full`.
    assert full.max() / full.min() > 2.0
    low, high = unpaired_interval(full, mode)
    assert low < 1.0 < high
    out = speedup_interval(measured("full", full), measured("mode", mode))
    assert out["timing_samples"] == len(full)
    assert out["speedup_ci_low"] <= out["speedup"] <= out["speedup_ci_high"]
    assert out["within_noise"] is False, out
    assert 1.0 < out["speedup_ci_low"], out
    # Tight around the true 1.05: the drift cancels within each pair.
    assert 1.03 < out["speedup_ci_low"] and out["speedup_ci_high"] < 1.07, out


def test_equal_work_that_drifts_together_is_within_noise():
    # The same drift with no gap: pairing must not manufacture a speedup either.
    full, mode = drifting_pair(gap=1.0)
    out = speedup_interval(measured("full", full), measured("mode", mode))
    assert out["within_noise"] is True, out
    assert 0.99 < out["speedup_ci_low"] <= 1.0 <= out["speedup_ci_high"] < 1.01, out
