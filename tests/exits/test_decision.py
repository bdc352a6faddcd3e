"""The lean exit decision (`Metric.decide`) agrees with the batched score and `should_exit`."""

from __future__ import annotations

import math

import pytest
import torch

from earlyexit.exits.confidence import METRICS, read_summary, should_exit

NAMES = sorted(METRICS)


def _rows(n: int = 200) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        vocab = int(torch.randint(2, 300, (1,), generator=gen))
        x = torch.randn(vocab, generator=gen) * float(torch.rand(1, generator=gen) * 30)
        rows.append(x if i % 3 else x.to(torch.float16))
    rows += [torch.full((7,), 3.0), torch.tensor([1e4, -1e4, -1e4]), torch.tensor([0.0, 1.0])]
    return rows


@pytest.mark.parametrize("name", NAMES)
def test_decision_matches_the_batched_score_on_both_sides_of_the_threshold(name):
    metric = METRICS[name]
    for x in _rows():
        score = float(metric(x[None])[0])
        assert math.isfinite(score)
        hair = 1e-5 * max(1.0, abs(score))
        for threshold, expected in ((score - hair, True), (score + hair, False)):
            assert metric.decide(x, threshold) is expected, (name, x, score, threshold)
            assert bool(should_exit(metric(x[None]), threshold)[0]) is expected


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_logits_never_exit(name, bad, dtype):
    metric = METRICS[name]
    for x in (torch.tensor([9.0, bad, 0.0], dtype=dtype), torch.full((3,), bad, dtype=dtype)):
        assert metric.decide(x, -math.inf) is False
        assert math.isnan(metric.from_summary(read_summary(metric.summary(x))))


@pytest.mark.parametrize("name", NAMES)
def test_logits_at_the_float32_edge_never_exit_wrongly(name):
    # Where log-softmax itself overflows (logits near +-3e38) the lean path declines to exit;
    # it never exits where the batched score would not.
    x = torch.tensor([3e38, -3e38, 0.0, 1.0])
    batched = bool(should_exit(METRICS[name](x[None]), -math.inf)[0])
    assert METRICS[name].decide(x, -math.inf) <= batched


def test_summaries_are_one_small_tensor_read_as_a_list():
    x = torch.randn(50)
    for metric in METRICS.values():
        summary = metric.summary(x)
        assert summary.dtype == torch.float32 and 1 <= summary.numel() <= 3
        values = read_summary(summary)
        assert isinstance(values, list) and len(values) == summary.numel()


@pytest.mark.parametrize("name", NAMES)
def test_decision_on_logits_that_carry_grad(name):
    # The cast happens inside log_softmax and nothing detaches: logits from a head with
    # trainable weights outside no_grad must still decide as the batched score does.
    x = torch.randn(40, requires_grad=True)
    score = float(METRICS[name](x[None])[0])
    assert METRICS[name].decide(x, score - 1e-4) is True
    assert METRICS[name].decide(x, score + 1e-4) is False
