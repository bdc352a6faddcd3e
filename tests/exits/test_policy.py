"""Threshold exits in the engine: decided by calibrated confidence, never by NaN, consistent with stats."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_gpt_neox

from earlyexit.exits.confidence import get_metric
from earlyexit.exits.head_stats import collect_head_stats, exit_shares
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine


def _heads(seed=0):
    adapter = get_adapter(tiny_gpt_neox(seed=seed))
    return adapter, HeadSet(adapter, HeadSpec("shared", (1, 3)))


def test_policy_exits_where_the_score_passes():
    # The policy's lean decision (Metric.decide) finishes the score on the host, so it agrees
    # with the batched score up to float32 rounding: test a relative hair on either side.
    adapter, heads = _heads()
    hidden = torch.randn(32, dtype=torch.float64)
    score = get_metric("max-prob")(heads(1, hidden)).item()
    assert ThresholdPolicy(heads, "max-prob", {1: score * (1 - 1e-6)})(1, hidden) is not None
    assert ThresholdPolicy(heads, "max-prob", {1: score * (1 + 1e-6)})(1, hidden) is None
    assert ThresholdPolicy(heads, "max-prob", {1: 0.0})(3, hidden) is None  # no threshold there


def test_unreachable_heads_are_not_evaluated():
    adapter, heads = _heads()
    policy = ThresholdPolicy(heads, "entropy", {1: math.inf, 3: -1.0})
    assert policy.exit_layers == [3]


def test_nan_logits_never_exit():
    adapter, heads = _heads()
    hidden = torch.full((32,), float("nan"), dtype=torch.float64)
    assert ThresholdPolicy(heads, "margin", {1: -math.inf})(1, hidden) is None


def test_threshold_for_a_headless_layer_is_rejected():
    adapter, heads = _heads()
    with pytest.raises(ValueError, match=r"layers \[2\] that have no head"):
        ThresholdPolicy(heads, "entropy", {2: 0.0})


def test_engine_exit_layers_match_teacher_forced_statistics():
    """Exits taken token by token in the engine equal the vectorised exit-share simulation."""
    adapter, heads = _heads(seed=2)
    ids = torch.randint(0, 97, (48,), generator=torch.Generator().manual_seed(3))
    stats = collect_head_stats(adapter, heads, ids, seq_len=48, progress=False, metrics=("max-prob",))
    # Thresholds at the median score make roughly half the tokens leave at each head.
    thresholds = {k: stats.scores["max-prob"][k].median().item() for k in heads.layers}
    policy = ThresholdPolicy(heads, "max-prob", thresholds)
    engine = ExitEngine(adapter, exit_layers=heads.layers)
    engine.forward(ids[:1])
    exits = [engine.forward(ids[t : t + 1], policy).exit_layer for t in range(1, 48)]
    shares = exit_shares(stats, "max-prob", thresholds)
    n = len(exits)
    for k in heads.layers:
        # The stats include position 0, which the engine prefilled; compare positions 1..47.
        sim = sum(1 for t in range(1, 48) if _first_exit(stats, thresholds, t) == k)
        assert exits.count(k) == sim
    assert 0 < exits.count(5) < n, "the test needs both early and full-depth tokens"
    assert math.isclose(sum(v for key, v in shares.items() if key != "agreement"), 1.0)


def _first_exit(stats, thresholds, t):
    for k in sorted(thresholds):
        if stats.scores["max-prob"][k][t] >= thresholds[k]:
            return k
    return 5
