"""Cost profile and cost model: hand-priced traces, interpolation, refusals, a measured profile."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import damped_model, hand_profile

from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.measure.cost_model import CATEGORIES, predict, price
from earlyexit.measure.profile import (
    DEPTH_RUN,
    CostProfile,
    ProfileRounds,
    _depth_ratio,
    depth_points,
    measure_profile,
    model_shape,
)
from earlyexit.model.adapter import get_adapter
from earlyexit.model.trace import UNKNOWN_RUN, TraceCounts


def test_profile_interpolates_inside_and_extends_linearly_outside():
    p = hand_profile()
    assert p.segment_ms(3, 1, 10) == pytest.approx(0.1 + 3 * 1.0)
    assert p.segment_ms(3, 1, 15) == pytest.approx(0.1 + 3 * 1.5)  # halfway in KV
    assert p.segment_ms(2, 3, 20) == pytest.approx(0.15 + 2 * 3.0)  # halfway between rows 2 and 4
    assert p.segment_ms(1, 6, 10) == pytest.approx(0.3 + 3.5)  # past 4 rows: the last slope goes on
    assert p.unembedding_ms(3) == pytest.approx(0.7)
    assert p.decision_overhead_ms("entropy") == pytest.approx(0.15)
    assert p.decision_overhead_ms(None) == 0.0
    with pytest.raises(ValueError, match="has no decision time for metric 'nope'"):
        p.decision_overhead_ms("nope")


def test_a_trace_is_priced_part_by_part_by_hand():
    trace = TraceCounts(
        passes=3,
        # a draft pass: 2 layers, 1 new row, exited; then a verification: 4 layers on 1 new + 2 pending
        segments=Counter({(2, 1, 0, 10, True, 0, 0, 0): 2, (4, 1, 2, 20, False, 0, 0, 0): 1}),
        checks=Counter({(1, True): 2, (1, False): 1}),
        unembed=Counter({3: 1}),
    )
    p = hand_profile()
    got = price(trace, p, "dssd", "entropy")
    verify_seg = 0.15 + 4 * 3.0  # rows 3 at KV 20: halfway between rows 2 and 4 in both tables
    assert got["layers_draft"] == pytest.approx(2 * (0.1 + 2 * 1.0))
    assert got["layers_full"] == pytest.approx(verify_seg / 3)
    assert got["layers_verify"] == pytest.approx(verify_seg * 2 / 3)
    assert got["layers_fill"] == 0
    assert got["head_matmuls"] == pytest.approx(3 * 0.3)
    assert got["exit_decisions"] == pytest.approx(3 * 0.15)
    assert got["unembedding"] == pytest.approx(0.7)
    assert got["pass_fixed"] == pytest.approx(0.15)
    # early-exit books the carried rows as KV fill; layerskip's checks are bare head calls.
    assert price(trace, p, "early-exit", "entropy")["layers_fill"] == pytest.approx(got["layers_verify"])
    assert price(trace, p, "layerskip", "entropy")["exit_decisions"] == 0
    per_token = predict(trace, 4, p, "dssd", "entropy")
    assert set(per_token) == {"tpot_ms", *CATEGORIES}
    assert per_token["tpot_ms"] == pytest.approx(sum(got.values()) / 4)
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        price(trace, p, "fast", None)


def test_a_batched_head_call_is_priced_at_its_rows_not_as_many_one_row_calls():
    # Two passes of a batch of 4: one check of 4 rows in one call, one of a lone row; 5 checks in all.
    trace = TraceCounts(passes=2, checks=Counter({(1, False): 5}), head_calls=Counter({4: 1, 1: 1}))
    old = hand_profile()  # no head_rows_ms (a profile from before batches): rows x one row's price
    assert price(trace, old, "early-exit", "entropy")["head_matmuls"] == pytest.approx(5 * 0.3)
    p = hand_profile()
    p.head_rows_ms = [0.3, 0.35, 0.45]  # rows 1, 2, 4: a call of 4 rows costs 1.5x one row
    assert p.head_call_ms(4) == pytest.approx(0.45) and p.head_call_ms(3) == pytest.approx(0.40)
    got = price(trace, p, "early-exit", "entropy")
    assert got["head_matmuls"] == pytest.approx(0.45 + 0.3)
    assert got["exit_decisions"] == pytest.approx(5 * 0.15)  # decisions: still per row
    # A check outside any recorded call (batch 1) stays a one-row call; the JSON keeps the calls.
    lone = TraceCounts(passes=1, checks=Counter({(1, False): 2}))
    assert price(lone, p, "early-exit", "entropy")["head_matmuls"] == pytest.approx(2 * 0.3)
    assert TraceCounts.from_json(json.loads(json.dumps(trace.to_json()))).head_calls == trace.head_calls
    stored_before = {k: v for k, v in trace.to_json().items() if k != "head_calls"}
    assert TraceCounts.from_json(stored_before).head_calls == {}


def test_del_shadow_head_rows_are_priced_as_head_calls_and_survive_the_record():
    trace = TraceCounts(passes=1, checks=Counter({(1, True): 2}), extra_head_rows=5)
    got = price(trace, hand_profile(), "del", "entropy")
    assert got["head_matmuls"] == pytest.approx((2 + 5) * 0.3) and got["exit_decisions"] == 0
    back = TraceCounts.from_json(json.loads(json.dumps(trace.to_json())))
    assert back.extra_head_rows == 5
    old = {k: v for k, v in trace.to_json().items() if k != "extra_head_rows"}  # a record from before DEL
    assert TraceCounts.from_json(old).extra_head_rows == 0


def test_propagated_kv_is_priced_per_layer_and_row_and_an_old_profile_says_it_cannot():
    trace = TraceCounts(
        passes=2,
        segments=Counter({(2, 1, 0, 10, True, 0, 0, 0): 2}),
        checks=Counter({(1, True): 2}),
        projections=Counter({(4, 1): 2}),  # two exited tokens, 4 skipped layers each
    )
    got = price(trace, hand_profile(projection_layer_ms=0.02), "early-exit", "entropy")
    assert got["kv_projections"] == pytest.approx(2 * 4 * 0.02)
    assert got["layers_fill"] == 0
    with pytest.raises(ValueError, match="no K/V projection time .* measure it again"):
        price(trace, hand_profile(), "early-exit", "entropy")
    # A trace without projections never asks for one: old profiles still price old runs.
    assert price(TraceCounts(passes=1), hand_profile(), "full", None)["kv_projections"] == 0
    # Traces stored before kv strategies existed have no projections entry.
    old = TraceCounts.from_json({"passes": 1, "segments": [], "checks": [], "unembed": []})
    assert old.projections == Counter()
    assert TraceCounts.from_json(trace.to_json()) == trace


def test_a_shallow_pass_saves_the_weight_traffic_its_depth_ratio_says_once_per_layer():
    # 4 layers; a pass 1 or 2 deep after one such pass runs at 0.6 / 0.8 of a full-depth pass's
    # per-layer time (1.0 ms at one row, KV 10), after two or more at 0.5 / 0.7; a ratio above 1
    # (noise) saves nothing.
    p = hand_profile(depth_ratio=[[0.6, 0.5], [0.8, 0.7], [1.1, 1.1], [1.0, 1.0]])
    assert p.segment_ms(2, 1, 10, reuse_depth=2, warm_layers=2, shallow_run=1) == pytest.approx(0.1 + 2 * 0.8)
    assert p.segment_ms(1, 1, 10, reuse_depth=1, warm_layers=1, shallow_run=1) == pytest.approx(0.1 + 0.6)
    # Weights settle in over a run of shallow passes; past the longest run timed, as that one.
    for run in (2, 3, 9):
        assert p.segment_ms(2, 1, 10, 2, 2, run) == pytest.approx(0.1 + 2 * 0.7)
    # Only the layers the previous pass ran are warm (a verification's layers below the exit).
    assert p.segment_ms(2, 1, 10, 2, warm_layers=1, shallow_run=1) == pytest.approx(0.1 + 0.8 + 1.0)
    # More rows: the saving is the weights, once per layer, not a share of the rows' compute.
    assert p.segment_ms(2, 4, 10, 2, 2, 1) == pytest.approx(0.2 + 2 * (2.5 - 0.2))
    assert p.segment_ms(2, 1, 20, 2, 2, 1) == pytest.approx(0.1 + 2 * (2.0 - 0.2 * 2.0))
    # Cold: no warm layer, no shallow pass before (right after a full-depth one), ratio above 1,
    # full depth.
    for reuse, warm, run in ((0, 0, 0), (2, 0, 1), (2, 2, 0), (3, 2, 1), (4, 2, 1)):
        assert p.segment_ms(2, 1, 10, reuse, warm, run) == pytest.approx(0.1 + 2 * 1.0)
    # A run not recorded (old traces): priced as the longest run timed.
    assert p.segment_ms(2, 1, 10, 2, 2, UNKNOWN_RUN) == pytest.approx(0.1 + 2 * 0.7)
    assert hand_profile().segment_ms(2, 1, 10, 1, 2, 1) == pytest.approx(2.1)  # old profile: no ratio
    # A profile from before runs were timed holds one ratio per depth: it prices every run alike.
    old = hand_profile(depth_ratio=[0.6, 0.8, 1.1, 1.0])
    assert old.depth_ratio == [[0.6], [0.8], [1.1], [1.0]]
    for run in (1, 4, UNKNOWN_RUN):
        assert old.segment_ms(2, 1, 10, 2, 2, run) == pytest.approx(0.1 + 2 * 0.8)
    assert "depth 1..4 in a row, x full depth: 0.60, 0.80, 1.10, 1.00" in old.describe()
    trace = TraceCounts(
        passes=4,
        segments=Counter(
            {
                (2, 1, 0, 10, True, 2, 2, 1): 2,
                (2, 1, 0, 10, True, 2, 2, 5): 1,
                (2, 1, 0, 10, False, 4, 2, 0): 1,
                (2, 1, 0, 10, False, 0, 0, 0): 1,
            }
        ),
        checks=Counter({(1, True): 3, (1, False): 2}),
    )
    got = price(trace, p, "early-exit", "entropy")
    assert got["layers_draft"] == pytest.approx(2 * (0.1 + 2 * 0.8) + (0.1 + 2 * 0.7))
    assert got["layers_full"] == pytest.approx(2 * (0.1 + 2 * 1.0))
    described = p.describe()
    assert "depth 1..4 after 1 such pass, x full depth: 0.60, 0.80, 1.10, 1.00" in described
    assert "depth 1..4 after 2 such passes, x full depth: 0.50, 0.70, 1.10, 1.00" in described


def test_deep_models_time_a_few_depths_and_interpolate_the_rest():
    assert depth_points(8) == list(range(1, 9))
    deep = depth_points(24)
    assert deep[0] == 1 and deep[-1] == 24 and len(deep) <= 13 and deep == sorted(set(deep))

    def one_run(depths, ms):  # the ratio by depth of passes after one shallow pass
        return [by_run[0] for by_run in _depth_ratio(depths, [[t] for t in ms])]

    # Per-layer 0.5 ms at depth 1 and 1.0 at depth 4 (2 and 3 not timed): linear between.
    assert one_run([1, 4], [0.5, 4.0]) == pytest.approx([0.5, 2 / 3, 5 / 6, 1.0])
    # A dip is noise: per layer 0.9, 0.5, 1.2, 1.0 pools to 0.7, 0.7, 1.1, 1.1.
    assert one_run([1, 2, 3, 4], [0.9, 1.0, 3.6, 4.0]) == pytest.approx([0.7 / 1.1, 0.7 / 1.1, 1.0, 1.0])
    assert one_run([1, 2, 3], [0.5, 1.4, 3.0]) == pytest.approx([0.5, 0.7, 1.0])  # already monotone
    # By run: each run length is its own column over its own full depth; a pass after more
    # shallow passes cannot cost more (0.9 then 1.0 at depth 1 pools to 0.95, 0.95).
    ratio = _depth_ratio([1, 2], [[0.9, 1.0, 0.6], [2.0, 2.0, 2.0]])
    assert ratio[0] == pytest.approx([0.95, 0.95, 0.6]) and ratio[1] == pytest.approx([1.0, 1.0, 1.0])


def test_a_profile_refuses_runs_of_another_shape_or_head_naming_both():
    p = hand_profile()
    p.check_prices("S", "linear")
    with pytest.raises(ValueError, match=r"model_shape: profile 'S', runs 'T'"):
        p.check_prices("T", "linear")
    with pytest.raises(ValueError, match=r"head_architecture: profile 'linear', runs 'lowrank'"):
        p.check_prices("S", "lowrank", 32)


def test_a_measured_profile_is_complete_and_round_trips(tmp_path):
    adapter = get_adapter(damped_model(0))
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    p = measure_profile(adapter, heads, [12, 20], max_rows=3, repeats=2, warmup=1, progress=False)
    # Structure only: no assertion compares one wall-clock time with another, as a loaded
    # machine reorders them (a K/V projection outlasting a layer, a fixed cost a pass).
    assert p.rows == [1, 2, 3] and p.kv_lengths == [12, 20]
    assert len(p.layer_ms) == 3 and all(len(r) == 2 for r in p.layer_ms)
    assert len(p.segment_fixed_ms) == 3 and all(len(r) == 2 for r in p.segment_fixed_ms)
    assert len(p.unembed_ms) == 3 and set(p.decision_ms) == {"entropy", "max-prob", "margin"}
    # Timed directly, never a difference of two timings: every one of these is a time spent.
    assert len(p.head_rows_ms) == 3 and p.head_rows_ms[0] == p.head_ms  # a head call on 1..R rows
    direct = [p.head_ms, p.pass_fixed_ms, p.projection_layer_ms, *p.unembed_ms, *p.decision_ms.values()]
    direct += p.head_rows_ms
    assert all(isinstance(t, float) and t > 0 for t in direct)
    assert all(t >= 0 for r in p.segment_fixed_ms for t in r)  # clamped at 0 by construction
    # The depth ratio: one row per depth, one column per run length, full depth the unit, and
    # monotone in run length by construction (pooled), whatever the timings.
    assert len(p.depth_ratio) == adapter.num_layers and p.depth_ratio[-1] == [1.0] * DEPTH_RUN
    assert all(len(by_run) == DEPTH_RUN for by_run in p.depth_ratio)
    assert all(by_run == sorted(by_run, reverse=True) for by_run in p.depth_ratio)
    assert p.identity["model_shape"] == model_shape(adapter)
    assert p.identity["head_architecture"] == "linear"
    path = tmp_path / "profile.json"
    p.save(path)
    assert CostProfile.load(path) == p
    assert "exit decision" in p.describe()
    with pytest.raises(ValueError, match="cost profile"):
        CostProfile.from_json({**json.loads(path.read_text()), "identity": {"format": "other"}})
    with pytest.raises(ValueError, match="must exceed max_rows"):
        measure_profile(adapter, heads, [2], max_rows=3, progress=False)


def test_profile_rounds_time_only_timed_rounds_and_leave_the_heads_as_they_were():
    adapter = get_adapter(damped_model(0))
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    rounds = ProfileRounds(adapter, heads, [12, 20], max_rows=2)
    with pytest.raises(ValueError, match="no timed round yet"):
        rounds.result()
    rounds.run(2, timed=False)
    assert rounds.rounds == 0
    marker = object()
    heads.graphs = marker  # whatever the caller had set comes back after every round
    rounds.run()
    rounds.run(2)
    assert rounds.rounds == 3 and heads.graphs is marker
    heads.graphs = None
    p = rounds.result()
    assert p.rows == [1, 2] and p.kv_lengths == [12, 20] and p.head_ms > 0
    back_to_back = measure_profile(adapter, heads, [12, 20], 2, repeats=1, warmup=0, progress=False)
    assert p.identity == back_to_back.identity
