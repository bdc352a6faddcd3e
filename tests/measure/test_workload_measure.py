"""Speed, acceptance and quality on the same generations, workload by workload: paired ratio
intervals, the user's texts cut at their stops, quality deltas over prompts, #MAT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import damped_model, prompts, quantile_thresholds

from earlyexit.decoding import DecodeStats, DSSDDecoding, EarlyExitDecoding, FullDecoding, Stop
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.measure.protocol import Measured
from earlyexit.measure.workloads import (
    mean_accepted_tokens,
    measure_workload,
    overall_metrics,
    quality_delta,
    ratio_interval,
    workload_metrics,
)
from earlyexit.model.adapter import get_adapter
from earlyexit.tasks.workload import Workload, WorkloadPrompt
from earlyexit.tasks.workloads import WorkloadError, check_workloads, heldout_workload


def letters(ids) -> str:
    return "".join(chr(97 + int(t) % 26) for t in ids)


def test_ratio_interval_is_a_ratio_of_sums_with_a_paired_interval():
    rng = np.random.default_rng(0)
    drift = 1 + 3 * rng.random(40)  # both sides slow down together
    base_t, mode_t = drift * 1.0, drift * 0.9  # the mode 10% faster per token, same tokens
    tokens = rng.integers(1, 20, 40).astype(float)
    point, low, high = ratio_interval(tokens, base_t * tokens, tokens, mode_t * tokens)
    assert point == pytest.approx(1 / 0.9)
    assert low == pytest.approx(1 / 0.9) and high == pytest.approx(1 / 0.9)  # paired: drift cancels
    with pytest.raises(ValueError, match="paired"):
        ratio_interval(tokens, tokens, tokens[:3], tokens[:3])


def test_quality_delta_is_the_mean_difference_over_prompts():
    full, mode = [1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 0, 0]
    delta, low, high = quality_delta(full, mode)
    assert delta == pytest.approx(-2 / 6) and low <= delta <= high <= 0 and low < -0.3
    assert quality_delta([1, 0], [1, 0]) == (0.0, 0.0, 0.0)


def test_one_token_outputs_still_have_a_speedup():
    one = [DecodeStats(tokens=1, ttft_s=0.01, total_s=0.01) for _ in range(4)]
    base = Measured("full", ids=[[3]] * 4, samples=one, prompts=4)
    fast = [DecodeStats(tokens=1, ttft_s=0.008, total_s=0.008) for _ in range(4)]
    mine = Measured("dssd", ids=[[3]] * 4, samples=fast, prompts=4)
    from earlyexit.measure.workloads import WorkloadResult
    from earlyexit.tasks.workload import Scores

    wl = Workload("w", [WorkloadPrompt((1,), 1)] * 4, "test", "test")
    result = WorkloadResult(wl, [base, mine], [["a"] * 4] * 2, [Scores({}, {})] * 2)
    fields = workload_metrics(result, "dssd", num_layers=6)
    assert fields["speedup"] == pytest.approx(1.25) and math.isnan(fields["decode_speedup"])
    assert fields["outputs_equal_full"] and fields["prompts"] == 4


@pytest.fixture(scope="module")
def tiny():
    adapter = get_adapter(damped_model(4))
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    return adapter, heads


def first_letter_scorer(texts, prompts_):
    """Quality = does the output start with the prompt's reference letter."""
    return {"starts_right": [float(t[:1] == p.reference) for t, p in zip(texts, prompts_, strict=True)]}


def workload_with_stops(n: int = 12) -> Workload:
    items = []
    for i, p in enumerate(prompts(n, 4)):
        stop = Stop(("a", "e"), (r"[x-z]i",)) if i % 2 == 0 else Stop()
        items.append(WorkloadPrompt(tuple(p.tolist()), 10, stop, reference="abcdefgh"[i % 8]))
    return Workload("letters", items, "random tokens", "test", ("starts_right",), first_letter_scorer)


def test_a_lossless_mode_equals_full_on_the_workload_and_is_scored_the_same(tiny):
    adapter, heads = tiny
    policy = ThresholdPolicy(heads, "entropy", quantile_thresholds(adapter, heads, "entropy", 0.3))
    wl = workload_with_stops()
    result = measure_workload(
        [FullDecoding(), DSSDDecoding(policy, 4)], adapter, wl, letters, None, repeats=2
    )
    assert result.texts[0] == result.texts[1] and result.measured[0].ids == result.measured[1].ids
    # The texts are the outputs cut before their stops: no stop string is left in them.
    for text, p in zip(result.texts[0], wl.prompts, strict=True):
        assert p.stop.find(text) is None
    assert any(len(ids) < 10 for ids in result.measured[0].ids), "some generations end at a stop"
    fields = workload_metrics(result, "dssd", num_layers=adapter.num_layers)
    assert fields["outputs_equal_full"] and fields["quality_delta.starts_right"] == 0.0
    assert fields["quality_delta_ci_low.starts_right"] == fields["quality_delta_ci_high.starts_right"] == 0.0
    assert fields["quality.starts_right"] == fields["quality_full.starts_right"]
    assert fields["mean_accepted_tokens"] >= 1.0 and fields["timing_samples"] == 24
    full_mat = mean_accepted_tokens(result.measured[0].first_repeat(), adapter.num_layers, "full")
    assert full_mat == pytest.approx(1.0)
    assert overall_metrics([result], "dssd", adapter.num_layers)["outputs_equal_full"]


def test_a_lossy_modes_quality_is_scored_on_its_own_outputs(tiny):
    adapter, heads = tiny
    policy = ThresholdPolicy(heads, "entropy", quantile_thresholds(adapter, heads, "entropy", 0.6))
    wl = workload_with_stops()
    result = measure_workload(
        [FullDecoding(), EarlyExitDecoding(policy)], adapter, wl, letters, None, repeats=1
    )
    fields = workload_metrics(result, "early-exit", num_layers=adapter.num_layers)
    mine = first_letter_scorer(result.texts[1], wl.prompts)["starts_right"]
    theirs = first_letter_scorer(result.texts[0], wl.prompts)["starts_right"]
    assert fields["quality.starts_right"] == pytest.approx(np.mean(mine))
    assert fields["quality_delta.starts_right"] == pytest.approx(np.mean(mine) - np.mean(theirs))
    assert math.isnan(fields["mean_accepted_tokens"])  # early-exit verifies nothing


def test_heldout_workload_is_todays_prompts_without_stops():
    stream = torch.arange(500)
    wl = heldout_workload(stream, 4, 16, 8, seed=0, domain="held-out text")
    from earlyexit.measure.protocol import prompt_set

    assert [list(p.ids) for p in wl.prompts] == [w.tolist() for w in prompt_set(stream, 4, 16, 0)]
    assert not wl.stop_at_eos and not wl.metrics and all(not p.stop for p in wl.prompts)


def test_bad_workloads_are_refused_naming_the_valid_ones(hf_offline):
    with pytest.raises(WorkloadError, match=r"unknown workload: .*'heldot'.*Valid workloads: heldout, "):
        check_workloads(["heldot"])
    with pytest.raises(WorkloadError, match=r"'piqa' is a multiple_choice task: it generates nothing"):
        check_workloads(["piqa"])
    with pytest.raises(WorkloadError, match="names a workload twice"):
        check_workloads(["heldout", "heldout"])
    with pytest.raises(WorkloadError, match="bench.workloads is empty"):
        check_workloads([])
    assert check_workloads(["heldout"]) == []
