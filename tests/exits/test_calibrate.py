"""Max-coverage calibration: hand-checked thresholds, ties, the agreement guarantee, JSON, reports."""

from __future__ import annotations

import json
import math

import pytest
import torch

from earlyexit.exits.calibrate import (
    DEFAULT_TARGETS,
    Calibration,
    calibrate,
    heldout_check,
    max_coverage_threshold,
    separation_report,
    validate_targets,
)
from earlyexit.exits.confidence import should_exit


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def b(values):
    return torch.tensor(values, dtype=torch.bool)


def test_hand_computed_threshold():
    # Sorted by score: agree = 1 1 0 1 0 -> running rates 1, 1, 2/3, 3/4, 3/5.
    scores = t([0.9, 0.8, 0.7, 0.6, 0.5])
    agree = b([1, 1, 0, 1, 0])
    assert max_coverage_threshold(scores, agree, 0.75) == (pytest.approx(0.6), 0.8)
    assert max_coverage_threshold(scores, agree, 0.6) == (pytest.approx(0.5), 1.0)
    assert max_coverage_threshold(scores, agree, 0.7) == (pytest.approx(0.6), 0.8)
    assert max_coverage_threshold(scores, agree, 0.8) == (pytest.approx(0.8), 0.4)
    assert max_coverage_threshold(scores, agree, 1.0) == (pytest.approx(0.8), 0.4)


def test_order_of_input_does_not_matter():
    scores = t([0.5, 0.9, 0.6, 0.8, 0.7])
    agree = b([0, 1, 1, 1, 0])
    assert max_coverage_threshold(scores, agree, 0.75) == (pytest.approx(0.6), 0.8)


def test_tie_group_is_never_split():
    # Prefix of 3 (0.9, 0.5, 0.5 with agree 1, 1, 0) would give 2/3 >= 0.6, but the 0.5 tie group
    # has 3 tokens (1, 0, 0): taking it whole gives 2/4 = 0.5 < 0.6. So only the 0.9 token exits.
    scores = t([0.9, 0.5, 0.5, 0.5])
    agree = b([1, 1, 0, 0])
    threshold, coverage = max_coverage_threshold(scores, agree, 0.6)
    assert threshold == pytest.approx(0.9) and coverage == 0.25
    # A later tie group can still be admissible once everything above it is in.
    # Cuts: after 0.9 -> 1/1, after the 0.5 group -> 2/3, after 0.1 -> 2/4 < 0.66.
    scores = t([0.9, 0.5, 0.5, 0.1])
    agree = b([1, 1, 0, 0])
    assert max_coverage_threshold(scores, agree, 0.66) == (pytest.approx(0.5), 0.75)


def test_all_tied_scores_are_all_in_or_all_out():
    scores = t([0.3] * 10)
    agree = b([1] * 7 + [0] * 3)
    assert max_coverage_threshold(scores, agree, 0.7) == (pytest.approx(0.3), 1.0)
    assert max_coverage_threshold(scores, agree, 0.71) == (math.inf, 0.0)


def test_unreachable_target_gives_inf_and_zero_coverage():
    scores = t([0.9, 0.8, 0.7])
    agree = b([0, 1, 1])
    assert max_coverage_threshold(scores, agree, 0.99) == (math.inf, 0.0)
    assert max_coverage_threshold(t([]), b([]), 0.5) == (math.inf, 0.0)
    assert not should_exit(scores, math.inf).any()


def test_nan_scores_never_confident_but_count_in_coverage():
    nan = float("nan")
    # The NaN tokens agree; if they were treated as confident they would raise coverage.
    scores = t([nan, 0.9, 0.8, nan, 0.7])
    agree = b([1, 1, 0, 1, 0])
    threshold, coverage = max_coverage_threshold(scores, agree, 0.5)
    assert threshold == pytest.approx(0.8) and coverage == 2 / 5
    assert max_coverage_threshold(t([nan, nan]), b([1, 1]), 0.5) == (math.inf, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_achieved_agreement_meets_target_on_random_data(seed):
    g = torch.Generator().manual_seed(seed)
    n = 300
    # Coarse scores force many ties; agreement correlates with the score, plus noise and NaNs.
    scores = (torch.rand(n, generator=g) * 20).floor() / 20
    agree = torch.rand(n, generator=g) < (0.3 + 0.7 * scores)
    scores[torch.rand(n, generator=g) < 0.05] = float("nan")
    for target in [*DEFAULT_TARGETS, 0.5, 0.77, 1.0]:
        threshold, coverage = max_coverage_threshold(scores, agree, target)
        passed = should_exit(scores, threshold)
        assert coverage == pytest.approx(passed.float().mean().item())
        if coverage == 0:
            assert threshold == math.inf
            continue
        assert agree[passed].double().mean().item() >= target
        # Maximality: admitting the next-lower tie group must break the target.
        below = scores[torch.isfinite(scores) & (scores < threshold)]
        if below.numel():
            wider = should_exit(scores, below.max().item())
            assert agree[wider].double().mean().item() < target


def test_bf16_scores_threshold_is_exact():
    scores = t([0.123, 0.456, 0.789, 0.3], dtype=torch.bfloat16)
    agree = b([0, 1, 1, 1])  # sorted: 0.789, 0.456, 0.3 agree; 0.123 does not
    threshold, coverage = max_coverage_threshold(scores, agree, 1.0)
    assert coverage == 0.75
    assert should_exit(scores, threshold).tolist() == [False, True, True, True]
    assert threshold == float(scores[3])  # the bf16 value itself, so the boundary token still exits


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, float("nan"), float("inf")])
def test_bad_targets_rejected_with_value_and_range(bad):
    with pytest.raises(ValueError) as err:
        validate_targets([0.9, bad])
    assert repr(float(bad)) in str(err.value) and "(0, 1]" in str(err.value)
    with pytest.raises(ValueError):
        max_coverage_threshold(t([0.5]), b([1]), bad)


def test_targets_other_validation():
    assert validate_targets([0.5, 1]) == (0.5, 1.0)
    assert validate_targets(DEFAULT_TARGETS) == DEFAULT_TARGETS
    with pytest.raises(ValueError, match="no targets"):
        validate_targets([])
    with pytest.raises(ValueError, match="twice"):
        validate_targets([0.9, 0.9])
    with pytest.raises(ValueError, match="not a number"):
        validate_targets(["0.9"])


def _two_layer_data():
    scores = {1: t([0.9, 0.8, 0.7, 0.6]), 3: t([0.95, 0.9, 0.85, 0.1])}
    agree = {1: b([1, 0, 0, 0]), 3: b([1, 1, 1, 0])}
    return scores, agree


def test_calibrate_and_lookup():
    scores, agree = _two_layer_data()
    cal = calibrate(scores, agree, "entropy", targets=[0.5, 0.99])
    assert cal.metric == "entropy" and cal.layers == [1, 3] and cal.n_tokens == 4
    assert cal.targets == [0.5, 0.99]
    assert cal.thresholds[1] == [pytest.approx(0.8), pytest.approx(0.9)]
    assert cal.coverage[1] == [0.5, 0.25]
    assert cal.thresholds[3] == [pytest.approx(0.1), pytest.approx(0.85)]
    assert cal.coverage[3] == [1.0, 0.75]
    assert cal.threshold(3, 0.99) == pytest.approx(0.85)
    assert cal.thresholds_for(0.5) == {1: pytest.approx(0.8), 3: pytest.approx(0.1)}
    with pytest.raises(KeyError):
        cal.threshold(2, 0.5)
    with pytest.raises(KeyError):
        cal.threshold(1, 0.7)


def test_calibrate_rejects_mismatched_inputs():
    scores, agree = _two_layer_data()
    with pytest.raises(ValueError, match="different layers"):
        calibrate(scores, {1: agree[1]}, "entropy")
    with pytest.raises(ValueError, match="same calibration tokens"):
        calibrate({1: t([0.5]), 3: t([0.5, 0.4])}, {1: b([1]), 3: b([1, 0])}, "entropy")
    with pytest.raises(ValueError, match="tokens"):
        max_coverage_threshold(t([0.5, 0.4]), b([1]), 0.5)


def test_json_round_trip_with_inf(tmp_path):
    scores = {0: t([0.9, 0.8, 0.7]), 2: t([0.5, 0.4, 0.3])}
    agree = {0: b([0, 1, 1]), 2: b([1, 1, 0])}
    cal = calibrate(scores, agree, "max-prob")
    assert math.inf in cal.thresholds[0]  # 0.99 is unreachable for layer 0
    path = tmp_path / "cal.json"
    cal.save(path)
    text = path.read_text()
    data = json.loads(text)  # strict JSON: no bare Infinity/NaN tokens
    assert "Infinity" not in text and "NaN" not in text
    assert {"metric", "targets", "thresholds", "coverage"} <= set(data)
    assert data["thresholds"]["0"][-1] == "inf"
    loaded = Calibration.load(path)
    assert loaded == cal
    assert loaded.threshold(0, 0.99) == math.inf
    assert list(loaded.thresholds) == [0, 2]


def test_heldout_check_numbers():
    cal = calibrate({1: t([0.9, 0.8, 0.7, 0.6])}, {1: b([1, 1, 0, 0])}, "margin", targets=[1.0, 0.5])
    assert cal.thresholds[1] == [pytest.approx(0.8), pytest.approx(0.6)]
    held_scores = {1: t([0.95, 0.85, 0.75, 0.65, float("nan")])}
    held_agree = {1: b([1, 0, 1, 1, 1])}
    rows = heldout_check(cal, held_scores, held_agree)
    assert [(r["layer"], r["target"]) for r in rows] == [(1, 1.0), (1, 0.5)]
    first, second = rows
    assert first["threshold"] == pytest.approx(0.8)
    assert first["calib_coverage"] == 0.5
    assert first["heldout_coverage"] == 2 / 5
    assert first["heldout_agreement"] == 0.5
    assert first["heldout_n"] == 5
    assert second["calib_coverage"] == 1.0
    assert second["heldout_coverage"] == 4 / 5
    assert second["heldout_agreement"] == 0.75


def test_heldout_check_nan_when_nothing_exits():
    cal = calibrate({1: t([0.9, 0.8])}, {1: b([0, 1])}, "margin", targets=[1.0])
    assert cal.thresholds[1] == [math.inf]
    (row,) = heldout_check(cal, {1: t([0.99, 0.5])}, {1: b([1, 1])})
    assert row["heldout_coverage"] == 0.0 and math.isnan(row["heldout_agreement"])


def test_separation_report_auroc():
    agree = {0: b([0, 0, 1, 1]), 1: b([1, 1, 1, 1])}
    perfect = t([0.1, 0.2, 0.8, 0.9])
    rows = separation_report(
        {
            "entropy": {0: perfect, 1: perfect},
            "margin": {0: -perfect},
            "max-prob": {0: t([0.5, 0.5, 0.5, 0.5])},
        },
        agree,
    )
    by_key = {(r["metric"], r["layer"]): r for r in rows}
    assert by_key[("entropy", 0)]["auroc"] == 1.0
    assert by_key[("entropy", 0)]["n"] == 4 and by_key[("entropy", 0)]["agree_rate"] == 0.5
    assert math.isnan(by_key[("entropy", 1)]["auroc"])  # one class only
    assert by_key[("entropy", 1)]["agree_rate"] == 1.0
    assert by_key[("margin", 0)]["auroc"] == 0.0
    assert by_key[("max-prob", 0)]["auroc"] == 0.5


def test_separation_report_hand_computed_with_ties_and_nan():
    # Positives {0.9, 0.5, NaN}, negatives {0.5, 0.2}. Pairs (pos > neg wins 1, tie 0.5), NaN ranks
    # lowest: 0.9 beats both (2), 0.5 ties 0.5 and beats 0.2 (1.5), NaN loses both (0) -> 3.5 / 6.
    scores = t([0.9, 0.5, float("nan"), 0.5, 0.2])
    agree = b([1, 1, 1, 0, 0])
    (row,) = separation_report({"entropy": {4: scores}}, {4: agree})
    assert row["auroc"] == pytest.approx(3.5 / 6)
    assert row["n"] == 5 and row["agree_rate"] == pytest.approx(0.6)
