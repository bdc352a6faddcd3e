"""An exit happens AT the threshold, on the path decoding takes, and calibration agrees with it.

- Every metric, through `ThresholdPolicy` inside an `ExitEngine` decode step (the decision
  decoding makes): a head calibrated at its own score exits, on saturated logits (entropy 0,
  max-prob 1, margin 1: the score a confident head keeps hitting) and on ordinary ones; the
  next float32 above that score does not. A `>` in `Metric.passes` fails these.
- The decision (`Metric.decide`) and the batched calibration score with `should_exit` use one
  score function: on 6,000 random rows they agree at the exact score, just above it in float64
  (the same float32 threshold) and at the next float32 above.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_gpt_neox

from earlyexit.exits.confidence import METRICS, should_exit
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine

NAMES = sorted(METRICS)
SATURATED = {"entropy": 0.0, "max-prob": 1.0, "margin": 1.0}  # the most confident score there is
HEAD = 1  # the exit layer under test; heads sit at 1 and 3 of a 6-layer model
LAST = 5


def next_float32_up(x: float) -> float:
    """The smallest float32 above `x`: the tightest threshold a float32 score can fail."""
    return float(np.nextafter(np.float32(x), np.float32(math.inf)))


class Recorder:
    """An exit check that records the hidden state the engine hands it at each exit layer."""

    def __init__(self, inner) -> None:
        self.inner, self.hidden = inner, {}

    def __call__(self, layer: int, hidden: torch.Tensor):
        self.hidden[layer] = hidden.clone()
        return self.inner(layer, hidden)


def heads_for(saturate: bool) -> tuple:
    """A tiny model's linear heads at 1 and 3; `saturate` scales head 1's weights so far up that
    its softmax is one-hot to float32 (all other tokens' probabilities underflow to 0)."""
    adapter = get_adapter(tiny_gpt_neox(seed=4))
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    if saturate:
        with torch.no_grad():
            heads.heads[str(HEAD)].proj.weight.mul_(1e6)
    return adapter, heads


def decode_step(adapter, heads, metric: str, threshold: float) -> tuple[int, torch.Tensor]:
    """One engine decode step after a 6-token prefill with `threshold` at the head at HEAD:
    (the exit layer, the hidden state the engine gave the exit check at HEAD)."""
    ids = torch.randint(0, 97, (7,), generator=torch.Generator().manual_seed(5))
    engine = ExitEngine(adapter, exit_layers=heads.layers)
    engine.forward(ids[:6])
    check = Recorder(ThresholdPolicy(heads, metric, {HEAD: threshold}))
    return engine.forward(ids[6:], check).exit_layer, check.hidden[HEAD]


def calibration_score(heads, metric: str, hidden: torch.Tensor) -> float:
    """The head's score as calibration computes and stores it: batched, float32."""
    return float(METRICS[metric](heads(HEAD, hidden[None]))[0])


@pytest.mark.parametrize("name", NAMES)
def test_saturated_head_exits_at_exactly_its_saturated_score_in_a_decode_step(name):
    adapter, heads = heads_for(saturate=True)
    layer, hidden = decode_step(adapter, heads, name, SATURATED[name])
    assert calibration_score(heads, name, hidden) == SATURATED[name]  # the head really is saturated
    assert layer == HEAD, f"{name}: a head at its saturated score {SATURATED[name]} must fire"
    assert ThresholdPolicy(heads, name, {HEAD: SATURATED[name]})(HEAD, hidden) is not None
    layer, _ = decode_step(adapter, heads, name, next_float32_up(SATURATED[name]))
    assert layer == LAST  # nothing reaches above the saturated score


@pytest.mark.parametrize("name", NAMES)
def test_ordinary_head_exits_at_exactly_its_calibrated_score_in_a_decode_step(name):
    adapter, heads = heads_for(saturate=False)
    _, hidden = decode_step(adapter, heads, name, math.inf)  # the state the decision will see
    score = calibration_score(heads, name, hidden)
    assert math.isfinite(score) and score not in (SATURATED[name], 0.0)  # an ordinary score
    layer, again = decode_step(adapter, heads, name, score)
    assert torch.equal(again, hidden)  # the same step, the same state
    assert layer == HEAD, f"{name}: the calibrated score {score!r} itself must exit"
    layer, _ = decode_step(adapter, heads, name, next_float32_up(score))
    assert layer == LAST


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_one_hot_logits_exit_at_the_saturated_score(name, dtype):
    for row in ([1e4, -1e4, -1e4], [0.0, -3e4, -3e4, -3e4], [50.0, -60.0]):
        x = torch.tensor(row, dtype=dtype)
        assert float(METRICS[name](x)) == SATURATED[name]
        assert METRICS[name].decide(x, SATURATED[name]) is True, (name, row, dtype)
        assert METRICS[name].decide(x, next_float32_up(SATURATED[name])) is False


def random_batches(n_rows: int, seed: int) -> list[torch.Tensor]:
    """Batches [N, V] as calibration scores them: random vocab sizes, dtypes and logit scales,
    from nearly flat to saturated."""
    gen = torch.Generator().manual_seed(seed)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    batches, total = [], 0
    while total < n_rows:
        n, vocab = (
            int(torch.randint(1, 80, (1,), generator=gen)),
            int(torch.randint(2, 300, (1,), generator=gen)),
        )
        n = min(n, n_rows - total)
        scale = 10 ** (torch.rand(n, 1, generator=gen) * 5 - 2)  # 0.01 .. 1000 per row
        x = torch.randn(n, vocab, generator=gen) * scale
        batches.append(x.to(dtypes[len(batches) % len(dtypes)]))
        total += n
    return batches


@pytest.mark.parametrize("name", NAMES)
def test_decision_and_calibration_agree_at_the_exact_score_on_6000_random_rows(name):
    metric = METRICS[name]
    rows = disagree = 0
    for batch in random_batches(6000, seed=sum(map(ord, name))):
        scores = metric(batch)  # calibration: batched, stored as float32
        for x, score in zip(batch, scores, strict=True):
            t = float(score)
            assert math.isfinite(t)
            for threshold in (t, math.nextafter(t, math.inf), next_float32_up(t)):
                rule = bool(should_exit(score[None], threshold)[0])
                disagree += metric.decide(x, threshold) is not rule
            rows += 1
    assert rows == 6000
    assert disagree == 0, f"{name}: {disagree} disagreements between decide and should_exit"
