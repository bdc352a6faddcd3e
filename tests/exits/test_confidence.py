"""Confidence metrics: right values on hand-computed cases, finite on extreme logits, NaN on broken ones."""

from __future__ import annotations

import math

import pytest
import torch

from earlyexit.exits.confidence import METRICS, get_metric, should_exit

NAMES = ["entropy", "max-prob", "margin"]


def test_registry_has_the_three_metrics():
    assert set(METRICS) == set(NAMES)
    for name in NAMES:
        assert get_metric(name).name == name


@pytest.mark.parametrize("vocab", [2, 7, 50])
def test_uniform_distribution(vocab):
    logits = torch.full((3, vocab), 1.25)
    ent = get_metric("entropy")
    assert torch.allclose(ent(logits), torch.full((3,), -math.log(vocab)), atol=1e-6)
    assert ent.to_natural(float(ent(logits)[0])) == pytest.approx(math.log(vocab), abs=1e-6)
    assert torch.allclose(get_metric("max-prob")(logits), torch.full((3,), 1 / vocab), atol=1e-7)
    assert torch.allclose(get_metric("margin")(logits), torch.zeros(3), atol=1e-7)


def test_hand_computed_distribution():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    logits = probs.log() + 3.0  # a shift must not matter
    entropy = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    assert float(get_metric("entropy")(logits)) == pytest.approx(-entropy, abs=1e-6)
    assert float(get_metric("max-prob")(logits)) == pytest.approx(0.5, abs=1e-6)
    assert float(get_metric("margin")(logits)) == pytest.approx(0.25, abs=1e-6)


def test_higher_is_more_confident_for_every_metric():
    sharp = torch.tensor([5.0, 0.0, 0.0, 0.0])
    flat = torch.tensor([0.5, 0.0, 0.0, 0.0])
    for name in NAMES:
        m = get_metric(name)
        assert float(m(sharp)) > float(m(flat)), name


def test_shapes_and_dtype():
    logits = torch.randn(2, 3, 11, dtype=torch.float64)
    for name in NAMES:
        out = get_metric(name)(logits)
        assert out.shape == (2, 3) and out.dtype == torch.float32
    assert get_metric("entropy")(torch.randn(11)).shape == ()


def test_one_hot_like_logits_have_zero_entropy_not_nan():
    logits = torch.tensor([[1e4, -1e4, -1e4], [0.0, -3e38, -3e38]])
    assert torch.equal(get_metric("entropy")(logits), torch.zeros(2))
    assert torch.equal(get_metric("max-prob")(logits), torch.ones(2))
    assert torch.equal(get_metric("margin")(logits), torch.ones(2))


EXTREMES = {
    torch.float32: 3e38,
    torch.float16: 65504.0,
    torch.bfloat16: 3.0e38,
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", list(EXTREMES))
def test_extreme_finite_logits_give_finite_scores(name, dtype):
    big = EXTREMES[dtype]
    rows = [
        [big, -big, 0.0, 1.0],
        [-big, -big, -big, -big],
        [big, big, big, big],
        [big, big, -big, -big],
        [0.0, 0.0, 0.0, 0.0],
        [-big, 0.0, -big, -big],
    ]
    logits = torch.tensor(rows, dtype=dtype)
    assert torch.isfinite(logits).all()
    out = get_metric(name)(logits)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all(), out
    # Two tied maxima: max-prob 1/2, margin 0, entropy log 2.
    expected = {"entropy": -math.log(2), "max-prob": 0.5, "margin": 0.0}[name]
    assert float(out[3]) == pytest.approx(expected, abs=1e-6)


def reference_scores(logits: torch.Tensor) -> dict[str, list[float]]:
    """The three scores by hand, in float64 with Python's math module, row by row."""
    out = {name: [] for name in NAMES}
    for row in logits.double().tolist():
        top = max(row)
        weights = [math.exp(x - top) for x in row]
        total = math.fsum(weights)
        probs = sorted((w / total for w in weights), reverse=True)
        out["entropy"].append(math.fsum(p * math.log(p) for p in probs if p > 0))
        out["max-prob"].append(probs[0])
        out["margin"].append(probs[0] - probs[1])
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_are_scored_at_float32_accuracy(dtype):
    """Half-precision logits are scored as exactly as float32 allows (a score computed in the
    input's own precision would be off by ~1e-3), against an independent float64 computation."""
    logits = (torch.randn(64, 30, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    want = reference_scores(logits)
    for name in NAMES:
        got = get_metric(name)(logits)
        assert got.dtype == torch.float32
        assert torch.allclose(
            got.double(), torch.tensor(want[name], dtype=torch.float64), rtol=0, atol=2e-6
        ), name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_logits_give_nan_and_never_exit(name, bad, dtype):
    logits = torch.tensor([[9.0, 0.0, 0.0], [9.0, bad, 0.0], [bad, bad, bad]], dtype=dtype)
    score = get_metric(name)(logits)
    assert math.isfinite(float(score[0]))
    assert torch.isnan(score[1:]).all()
    # Even the loosest threshold must not let them through.
    assert should_exit(score, -float("inf")).tolist() == [True, False, False]


def test_should_exit():
    score = torch.tensor([0.9, 0.5, 0.49, float("nan"), float("inf")])
    assert should_exit(score, 0.5).tolist() == [True, True, False, False, False]
    assert should_exit(score, float("inf")).tolist() == [False] * 5
    per_head = torch.tensor([1.0, 0.1, 0.1, 0.1, 0.1])
    assert should_exit(score, per_head).tolist() == [False, True, True, False, False]


def test_unknown_metric_names_the_bad_name_and_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_metric("entrpy")
    msg = str(err.value)
    assert "entrpy" in msg
    for name in NAMES:
        assert name in msg


def test_margin_needs_two_tokens_and_empty_vocab_is_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        get_metric("margin")(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="vocab"):
        get_metric("entropy")(torch.zeros(3, 0))
