"""`exit_shares`: per-head shares and agreement against a hand-worked case and a per-token count."""

from __future__ import annotations

import math

import pytest
import torch

from earlyexit.exits.head_stats import HeadStats, exit_shares

NAN = float("nan")


def stats_of(scores: dict[int, list[float]], agree: dict[int, list[bool]]) -> HeadStats:
    layers = sorted(scores)
    return HeadStats(
        layers=layers,
        scores={"max-prob": {k: torch.tensor(v, dtype=torch.float32) for k, v in scores.items()}},
        agree={k: torch.tensor(v) for k, v in agree.items()},
        n_tokens=len(scores[layers[0]]),
    )


def test_hand_worked_shares():
    stats = stats_of(
        {1: [0.9, 0.2, 0.5, NAN, 0.7, 0.1], 3: [0.0, 0.8, 0.9, 0.95, 0.1, 0.3]},
        {1: [True, False, False, True, True, False], 3: [False, True, True, False, False, False]},
    )
    shares = exit_shares(stats, "max-prob", {3: 0.8, 1: 0.5})
    # Head 1 (>= 0.5; NaN never): tokens 0, 2, 4. Head 3 (>= 0.8) of the rest: tokens 1, 3. Final: 5.
    assert shares["layer_1"] == pytest.approx(3 / 6)
    assert shares["layer_3"] == pytest.approx(2 / 6)
    assert shares["final"] == pytest.approx(1 / 6)
    # Emitted tokens equal to the final layer's: 0 and 4 (head 1), 1 (head 3), 5 (the final layer).
    assert shares["agreement"] == pytest.approx(4 / 6)


def direct_count(stats: HeadStats, thresholds: dict[int, float]) -> dict[str, float]:
    """One token at a time: the first head in depth order whose finite score passes, else final."""
    counts = dict.fromkeys([*(f"layer_{k}" for k in thresholds), "final"], 0)
    correct = 0
    for t in range(stats.n_tokens):
        for k in sorted(thresholds):
            score = float(stats.scores["max-prob"][k][t])
            if math.isfinite(score) and score >= thresholds[k]:
                counts[f"layer_{k}"] += 1
                correct += bool(stats.agree[k][t])
                break
        else:
            counts["final"] += 1
            correct += 1
    return {**{key: n / stats.n_tokens for key, n in counts.items()}, "agreement": correct / stats.n_tokens}


@pytest.mark.parametrize("seed", range(3))
def test_shares_equal_a_per_token_count(seed):
    gen = torch.Generator().manual_seed(seed)
    n, layers = 500, [0, 2, 3, 5]
    # Scores on a coarse grid of eighths (exact in float32), so many sit exactly on a threshold;
    # some NaN and inf.
    scores = {k: (torch.randint(0, 9, (n,), generator=gen) / 8).tolist() for k in layers}
    for k in layers:
        for t in torch.randint(0, n, (20,), generator=gen).tolist():
            scores[k][t] = NAN if t % 2 else math.inf
    agree = {k: (torch.rand(n, generator=gen) < 0.6).tolist() for k in layers}
    stats = stats_of(scores, agree)
    thresholds = {0: 0.875, 2: 0.625, 3: math.inf, 5: 0.5}  # head 3 can never fire
    got = exit_shares(stats, "max-prob", thresholds)
    want = direct_count(stats, thresholds)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["layer_3"] == 0 and 0 < got["final"] < 1
