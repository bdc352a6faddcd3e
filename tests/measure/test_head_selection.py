"""Heads chosen by priced time: the greedy search, and the choice on a real model and profile."""

from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import damped_model, hand_profile, prompts, quantile_thresholds

from earlyexit.decoding import DecodeSettings, make_strategy
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.measure.cost_model import predict
from earlyexit.measure.head_selection import HeadSelection, Step, backward_elimination, kept, select_heads
from earlyexit.measure.protocol import measure_decoding
from earlyexit.model.adapter import get_adapter
from earlyexit.model.trace import TraceCounts


def additive(base: float, weight: dict[int, float]):
    """A price that each head moves by its own weight; records the subsets asked for."""
    asked: list[tuple[int, ...]] = []

    def priced(subset: tuple[int, ...]) -> float:
        asked.append(subset)
        return base + sum(weight[h] for h in subset)

    return priced, asked


def test_backward_elimination_drops_exactly_the_heads_that_cost_more_than_they_save():
    priced, asked = additive(10.0, {1: -1.0, 2: 0.5, 4: -0.3, 5: 0.2})
    tried = backward_elimination([5, 1, 4, 2], priced)
    assert tried[0] == Step((1, 2, 4, 5), 9.4)
    assert kept(tried).heads == (1, 4)
    assert kept(tried).priced_tpot_ms == pytest.approx(8.7)
    # Round 1: four subsets of three (drops 2); round 2: three of two (drops 5); round 3: two of one.
    assert len(tried) == 1 + 4 + 3 + 2 and [s.heads for s in tried] == asked


def test_backward_elimination_keeps_every_head_that_pays_and_drops_every_one_that_does_not():
    paying, _ = additive(10.0, {1: -1.0, 3: -2.0})
    tried = backward_elimination([1, 3], paying)
    assert kept(tried).heads == (1, 3) and len(tried) == 3  # one round: no removal helps
    costly, _ = additive(10.0, {1: 1.0, 3: 2.0})
    assert kept(backward_elimination([1, 3], costly)).heads == ()
    flat, _ = additive(10.0, {1: 0.0, 3: 0.0})
    assert kept(backward_elimination([1, 3], flat)).heads == (1, 3)  # a removal must lower the price
    assert backward_elimination([], flat) == [Step((), 10.0)]


def test_a_selection_round_trips_through_json_with_dropped_heads_at_infinity():
    sel = HeadSelection((2,), {2: -1.5, 4: math.inf}, (Step((2, 4), 5.0), Step((2,), 4.5)), 4.8)
    data = sel.to_json()
    assert data["thresholds"] == {"2": -1.5, "4": "inf"}  # strict JSON: no Infinity literal
    assert HeadSelection.from_json(data) == sel
    assert "heads [2]: 4.500 ms/token  <- kept" in sel.describe()


def _setup(q: float = 0.5):
    adapter = get_adapter(damped_model(seed=3))
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    thresholds = quantile_thresholds(adapter, heads, "max-prob", q)
    return adapter, heads, thresholds


def _make(heads, mode: str):
    def make(policy):
        return make_strategy("full") if policy is None else make_strategy(mode, heads, policy)

    return make


@pytest.mark.parametrize("mode", ["dssd", "early-exit"])
def test_heads_dearer_than_the_layers_they_skip_are_all_dropped_and_then_cost_what_full_costs(mode):
    adapter, heads, thresholds = _setup()
    dear = dataclasses.replace(hand_profile(), head_ms=100.0)
    settings = DecodeSettings(max_new_tokens=8)
    sel = select_heads(
        adapter, heads, "max-prob", thresholds, _make(heads, mode), prompts(4, 1), settings, dear, mode
    )
    assert sel.kept == () and all(math.isinf(t) for t in sel.thresholds.values())
    assert sel.tried[0].heads == (1, 3) and sel.tried[0].priced_tpot_ms > 100  # the heads did run
    # With no head left the mode does exactly full's work, so it prices exactly as full.
    assert kept(sel.tried).priced_tpot_ms == pytest.approx(sel.full_priced_tpot_ms)


def test_free_heads_that_fire_are_kept_and_each_price_is_that_subsets_own_decode():
    adapter, heads, thresholds = _setup()
    free = dataclasses.replace(hand_profile(), head_ms=0.0, decision_ms={"max-prob": 0.0})
    settings, ps = DecodeSettings(max_new_tokens=8), prompts(4, 1)
    make = _make(heads, "dssd")
    sel = select_heads(adapter, heads, "max-prob", thresholds, make, ps, settings, free, "dssd")
    assert sel.kept and sel.thresholds == {
        h: (t if h in sel.kept else math.inf) for h, t in thresholds.items()
    }
    assert kept(sel.tried).priced_tpot_ms < sel.full_priced_tpot_ms
    # The kept subset's price is what its own decode of the same prompts prices at.
    from earlyexit.exits.policy import ThresholdPolicy

    policy = ThresholdPolicy(heads, "max-prob", sel.thresholds)
    _, summary = measure_decoding(make(policy), adapter, ps, settings, repeats=1, warmup=0)
    again = predict(
        TraceCounts.from_json(summary["trace"]), summary["decode_tokens"], free, "dssd", "max-prob"
    )
    assert again["tpot_ms"] == pytest.approx(kept(sel.tried).priced_tpot_ms)


def test_heads_that_can_never_fire_are_not_searched_and_other_modes_are_refused():
    adapter, heads, thresholds = _setup()
    thresholds[3] = math.inf
    dear = dataclasses.replace(hand_profile(), head_ms=100.0)
    settings = DecodeSettings(max_new_tokens=4)
    sel = select_heads(
        adapter, heads, "max-prob", thresholds, _make(heads, "dssd"), prompts(2, 1), settings, dear, "dssd"
    )
    assert {s.heads for s in sel.tried} == {(1,), ()}
    with pytest.raises(ValueError, match="modes early-exit, dssd, not 'layerskip'"):
        select_heads(
            adapter, heads, "max-prob", thresholds, _make(heads, "dssd"), [], settings, dear, "layerskip"
        )
