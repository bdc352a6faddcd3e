"""Batch measurement: groups of B prompts, every strategy interleaved, the same outputs as batch 1."""

from __future__ import annotations

import math

import pytest
from conftest import damped_model, hand_profile, prompts

from earlyexit.decoding import DecodeSettings, FullDecoding, engine_for
from earlyexit.measure.batches import (
    HF_BATCHED,
    batch_groups,
    batch_metrics,
    check_batch_sizes,
    measure_batches,
)
from earlyexit.model.adapter import get_adapter


def test_groups_are_whole_batches_in_order():
    assert batch_groups(7, 3) == [[0, 1, 2], [3, 4, 5]]  # the seventh prompt is left out
    assert batch_groups(4, 4) == [[0, 1, 2, 3]] and batch_groups(3, 4) == []


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([], "is empty"),
        ([1, 0], r"integers >= 1, got \[1, 0\]"),
        ([2, 16], r"a batch of 16 needs as many prompts, and the workloads have 8"),
        ([True], "integers >= 1"),
    ],
)
def test_bad_batch_sizes_are_refused_naming_the_value(sizes, message):
    with pytest.raises(ValueError, match=message):
        check_batch_sizes(sizes, 8)


def test_sizes_are_sorted_and_distinct():
    assert check_batch_sizes([4, 1, 2, 4], 8) == [1, 2, 4]


@pytest.fixture(scope="module")
def measured():
    model = damped_model(3).double()
    adapter = get_adapter(model)
    group = prompts(5, seed=31, max_len=12)
    settings = [DecodeSettings(max_new_tokens=6 + 2 * i) for i in range(5)]  # own budgets: staggered ends
    runs = measure_batches([FullDecoding()], adapter, group, settings, size=2, repeats=2, warmup=0)
    return adapter, group, settings, runs


def test_each_strategy_is_timed_on_whole_batches_and_returns_batch_ones_outputs(measured):
    adapter, group, settings, (full, hf) = measured
    assert (full.name, hf.name) == ("full", HF_BATCHED)
    assert len(full.samples) == len(hf.samples) == 2 * 2  # 2 groups of 2 (the fifth left out) x 2 repeats
    alone = FullDecoding()
    want = [
        alone.generate(engine_for(alone, adapter), p, s).ids
        for p, s in zip(group[:4], settings[:4], strict=True)
    ]
    assert full.ids == want and hf.ids == want
    assert full.decode_tokens == sum(len(w) - 1 for w in want)
    assert all(s.tokens == s.seq_decode_tokens + 2 for s in full.samples)  # two sequences per batch
    assert full.trace.passes > 0 and full.flops > 0 and hf.flops > 0


def test_metrics_compare_with_full_at_the_same_size_and_are_priced(measured):
    _, _, _, (full, hf) = measured
    own = batch_metrics(full, full, profile=hand_profile())
    assert own["throughput_speedup"] == pytest.approx(1.0) and own["seq_speedup"] == pytest.approx(1.0)
    assert own["outputs_equal_full"] and own["flops_ratio"] == pytest.approx(1.0)
    assert own["predicted_speedup"] == pytest.approx(1.0)
    vs = batch_metrics(full, hf, profile=hand_profile())
    assert vs["throughput_speedup_ci_low"] <= vs["throughput_speedup"] <= vs["throughput_speedup_ci_high"]
    assert vs["outputs_equal_full"] and vs["tokens_per_s"] > 0 and math.isfinite(vs["prediction_error"])
    # transformers keeps finished rows running until the batch ends: more work per kept token.
    assert vs["flops_ratio"] > 1.0


def test_a_batch_larger_than_the_prompts_is_refused():
    model = damped_model(3).double()
    with pytest.raises(ValueError, match="a batch of 4 needs 4 prompts, got 3"):
        three = prompts(3, seed=1)
        measure_batches([FullDecoding()], get_adapter(model), three, [DecodeSettings(4)] * 3, size=4)


def test_batch_one_runs_todays_path(measured):
    adapter, group, settings, _ = measured
    (full, hf) = measure_batches(
        [FullDecoding()], adapter, group[:2], settings[:2], size=1, repeats=1, warmup=0
    )
    assert full.ids == hf.ids and len(full.samples) == 2  # one sample per prompt
    assert full.trace.passes == sum(len(i) - 1 for i in full.ids)  # batch 1's own trace: a pass per token
