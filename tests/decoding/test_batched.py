"""Batched decoding equals one-at-a-time decoding: every mode, every KV rule, B in {2, 3, 5}.

The reference is today's path: `strategy.generate` on an `ExitEngine`, one prompt after another.
Float64 tiny Llama and GPT-NeoX models whose heads fire often (conftest's RULE_CASES), prompts of
different lengths, finishes staggered by the context limit (budgets), EOS and stop strings. Each
sequence must get the same tokens, the same exit layer at every decode pass, and the same drafts,
acceptances and verifications; the batch must compute exactly the layer rows the sequences compute
alone (plus padding it reports), and no sequence may see another's entries or stale ones.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import prompts
from test_stops import cut_at_stop, letters

from earlyexit.decoding import DecodeSettings, FullDecoding, Stop, StopCheck, engine_for, make_strategy
from earlyexit.decoding.batched import BatchResult, batched_engine_for, generate_batch
from earlyexit.model.batched_engine import BatchedExitEngine
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import ReplayCapture

MODES = {  # label: (mode, factory keywords)
    "full": ("full", {}),
    "early-exit-fill": ("early-exit", {"kv": "fill"}),
    "early-exit-propagate": ("early-exit", {"kv": "propagate"}),
    "early-exit-skip": ("early-exit", {"kv": "skip"}),
    "layerskip": ("layerskip", {"draft_length": 3}),
    "dssd": ("dssd", {"max_draft": 4}),
    "del": ("del", {}),
    "del-tpl": ("del", {"draft_stop": "tpl", "context": 4}),
}
EXITING = {"early-exit-fill", "early-exit-propagate", "early-exit-skip", "dssd"}  # heads decide exits
DRAFTING = {"layerskip", "dssd", "del", "del-tpl"}

PROMPTS = prompts(5, 21)  # lengths 4, 4, 7, 9, 7
EOS = {"llama": 7, "neox": 13}  # tokens greedy emits in some sequences, at different steps
STOP = {"llama": ("zd",), "neox": ("ny",)}  # likewise, as text (test_stops.letters)
CONTEXT = 16  # with 14 new tokens: budgets 12, 12, 9, 7, 9 where the context binds


def settings_for(family: str, eos: bool = False, stop: bool = False) -> DecodeSettings:
    check = StopCheck(Stop(STOP[family]), letters) if stop else None
    return DecodeSettings(max_new_tokens=14, eos_token_id=EOS[family] if eos else None, stop=check)


def strategy_for(label, heads, policy):
    mode, kwargs = MODES[label]
    return make_strategy(mode, heads, policy, **kwargs)


def one_at_a_time(strategy, engine, prompt_list, settings):
    """Today's path on one engine, prompt after prompt: each result and its decode passes' exit layers."""
    inner, out = engine.forward, []
    for prompt in prompt_list:
        exits = []

        def forward(ids, exit_check=None, exits=exits):
            step = inner(ids, exit_check)
            exits.append(step.exit_layer)
            return step

        engine.forward = forward
        try:
            out.append((strategy.generate(engine, prompt, settings), exits[1:]))  # [0] is the prefill
        finally:
            del engine.forward
    return out


COUNTS = ("tokens", "forward_passes", "drafted", "accepted", "verifications")
DEMO_COUNTS = ("full_model_drafts", "full_model_drafts_accepted")


def assert_same_as_alone(batch: BatchResult, alone, label: str) -> None:
    """Token for token, exit for exit, draft for draft; the batch's work is the sequences' own."""
    assert batch.exits is not None and len(batch.results) == len(alone)
    for i, ((single, exits), got, got_exits) in enumerate(
        zip(alone, batch.results, batch.exits, strict=True)
    ):
        where = f"{label}: sequence {i}"
        assert got.ids == single.ids, where
        assert got_exits == exits, where
        assert got.stats.exit_histogram == single.stats.exit_histogram, where
        for key in COUNTS + DEMO_COUNTS:
            assert getattr(got.stats, key) == getattr(single.stats, key), (where, key)
    singles = [s.stats for s, _ in alone]
    assert batch.exit_histogram == sum((s.exit_histogram for s in singles), Counter())
    assert (batch.drafted, batch.accepted) == (
        sum(s.drafted for s in singles),
        sum(s.accepted for s in singles),
    )
    # Every head evaluation, projection and shadow-token row of the sequences, and no other.
    assert batch.trace.checks == sum((s.trace.checks for s in singles), Counter())
    assert batch.trace.projected_rows == sum(s.trace.projected_rows for s in singles)
    assert batch.trace.extra_head_rows == sum(s.trace.extra_head_rows for s in singles)
    # Rows that left a pass (exits, finished sequences) are not computed: the batch's layer rows are
    # exactly the sequences' own, plus the padding it reports.
    assert batch.trace.layer_rows - batch.padding_layer_rows == sum(s.layer_rows for s in singles)
    assert batch.trace.passes == batch.forward_passes - 1 == len(batch.passes)


@pytest.fixture(scope="module")
def family(rule_case):
    model = rule_case[0]
    return "llama" if model.config.model_type == "llama" else "neox"


@pytest.mark.parametrize("label", MODES)
@pytest.mark.parametrize("size", [2, 3, 5])
def test_every_mode_at_batch_b_equals_decoding_one_at_a_time(rule_case, family, label, size):
    _, adapter, heads, policy = rule_case
    strategy = strategy_for(label, heads, policy)
    last = adapter.num_layers - 1
    if size == 2:  # budgets cut by the context; the batch takes the ExitEngine's settings
        prompt_list, settings = PROMPTS[1:3], settings_for(family)
        engine = given = engine_for(strategy, adapter, max_len=CONTEXT)
    elif size == 3:  # EOS; the batch builds its own engine from the adapter
        prompt_list, settings = PROMPTS[2:], settings_for(family, eos=True)
        engine, given = engine_for(strategy, adapter), adapter
    else:  # all of it, on a batched engine built for the strategy
        prompt_list, settings = PROMPTS, settings_for(family, eos=True, stop=True)
        engine = engine_for(strategy, adapter, max_len=CONTEXT)
        given = batched_engine_for(strategy, adapter, 5, max_len=CONTEXT)
    alone = one_at_a_time(strategy, engine, prompt_list, settings)
    batch = generate_batch(strategy, given, prompt_list, settings)
    assert_same_as_alone(batch, alone, f"{family} {label} B={size}")
    lengths = [len(r.ids) for r in batch.results]
    assert len(set(lengths)) > 1, f"finishes must be staggered: {lengths}"
    if label in EXITING:
        assert any(k < last for exits in batch.exits for k in exits), "heads must fire"
    if label in DRAFTING:
        assert batch.drafted > 0


@pytest.mark.parametrize("label", ["layerskip", "dssd", "del", "del-tpl"])
def test_lossless_modes_in_a_batch_equal_batched_full(rule_case, family, label):
    _, adapter, heads, policy = rule_case
    settings = settings_for(family, eos=True, stop=True)
    full = generate_batch(FullDecoding(), adapter, PROMPTS, settings)
    mode = generate_batch(strategy_for(label, heads, policy), adapter, PROMPTS, settings)
    assert mode.ids == full.ids
    assert 0 < mode.accepted < mode.drafted, "both accepted and rejected drafts must occur"
    assert sum(len(ids) < 14 for ids in full.ids) >= 2


def test_stop_strings_cut_each_sequence_where_its_own_text_first_holds_one(rule_case, family):
    _, adapter, heads, policy = rule_case
    stop = Stop(STOP[family])
    for label in ("full", "early-exit-fill"):
        strategy = strategy_for(label, heads, policy)
        plain = generate_batch(strategy, adapter, PROMPTS, settings_for(family))
        stopped = generate_batch(strategy, adapter, PROMPTS, settings_for(family, stop=True))
        assert stopped.ids == [cut_at_stop(ids, stop) for ids in plain.ids]
        assert stopped.ids != plain.ids


@pytest.mark.parametrize("label", ["early-exit-fill", "early-exit-skip", "dssd", "del"])
def test_changing_one_prompt_changes_no_other_sequence(rule_case, family, label):
    _, adapter, heads, policy = rule_case
    strategy = strategy_for(label, heads, policy)
    settings = settings_for(family, eos=True)
    before = generate_batch(strategy, adapter, PROMPTS, settings)
    # Another prompt of another length in the middle of the batch: new padding, new widths.
    changed = [*PROMPTS[:2], torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]), *PROMPTS[3:]]
    after = generate_batch(strategy, adapter, changed, settings)
    assert after.ids[2] != before.ids[2]
    for i in (0, 1, 3, 4):
        assert after.ids[i] == before.ids[i], i
        assert after.exits[i] == before.exits[i], i


@pytest.mark.parametrize("label", ["early-exit-fill", "early-exit-propagate", "dssd"])
def test_stale_padding_and_scratch_entries_are_never_attended(rule_case, family, label):
    """Every buffer entry holds 1e30 before the batch, and the engine ran another batch before: any
    entry a sequence has not written itself would change its logits beyond recognition."""
    _, adapter, heads, policy = rule_case
    strategy = strategy_for(label, heads, policy)
    settings = settings_for(family, eos=True)
    clean = generate_batch(strategy, adapter, PROMPTS, settings)
    engine = batched_engine_for(strategy, adapter, 5, max_len=32)
    for buffer in engine.cache.keys + engine.cache.values:
        buffer.fill_(1e30)
    generate_batch(strategy, engine, list(reversed(PROMPTS)), settings)  # leaves stale entries
    poisoned = generate_batch(strategy, engine, PROMPTS, settings)
    assert poisoned.ids == clean.ids
    assert poisoned.exits == clean.exits


def test_one_prompt_takes_todays_path(rule_case, monkeypatch):
    _, adapter, heads, policy = rule_case
    strategy = make_strategy("dssd", heads, policy)
    settings = DecodeSettings(max_new_tokens=10)
    expected = strategy.generate(engine_for(strategy, adapter), PROMPTS[0], settings)

    def no_batched_pass(*args, **kwargs):
        raise AssertionError("batch 1 must not run the batched engine")

    monkeypatch.setattr(BatchedExitEngine, "forward", no_batched_pass)
    for given in (adapter, engine_for(strategy, adapter)):
        result = generate_batch(strategy, given, [PROMPTS[0]], settings)
        assert result.ids == [expected.ids] and result.exits is None
        assert result.exit_histogram == expected.stats.exit_histogram
        assert result.drafted == expected.stats.drafted and result.trace.passes == expected.stats.trace.passes


def test_batch_timing_and_totals_are_consistent(rule_case, family):
    _, adapter, heads, policy = rule_case
    batch = generate_batch(
        strategy_for("dssd", heads, policy), adapter, PROMPTS, settings_for(family, eos=True)
    )
    for r in batch.results:
        assert 0 < r.stats.ttft_s <= r.stats.total_s <= batch.total_s
        assert r.stats.flops == 0 and r.stats.trace.passes == 0  # the work is the batch's
    assert batch.first_token_s == [r.stats.ttft_s for r in batch.results]
    assert batch.finish_s == [r.stats.total_s for r in batch.results]
    assert batch.tokens == sum(len(ids) for ids in batch.ids)
    assert batch.verifications == sum(r.stats.verifications for r in batch.results) > 0
    assert batch.flops > 0


def test_bad_batches_are_refused_before_decoding_naming_the_sizes(rule_case):
    _, adapter, heads, policy = rule_case
    strategy = make_strategy("early-exit", heads, policy)
    settings = DecodeSettings(max_new_tokens=4)
    with pytest.raises(ValueError, match="empty batch"):
        generate_batch(strategy, adapter, [], settings)
    engine = batched_engine_for(strategy, adapter, 2, max_len=12)
    with pytest.raises(
        ValueError, match="a batch of 3 sequences does not fit the KV cache of 2 sequences x 12"
    ):
        generate_batch(strategy, engine, PROMPTS[:3], settings)
    long = [torch.zeros(12, dtype=torch.long), PROMPTS[0]]
    with pytest.raises(
        ValueError, match="prompt 0 of 12 tokens leaves no room in the KV cache's context of 12"
    ):
        generate_batch(strategy, engine, long, settings)
    with pytest.raises(ValueError, match="empty prompt 1"):
        generate_batch(strategy, engine, [PROMPTS[0], torch.tensor([], dtype=torch.long)], settings)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate_batch(strategy, engine, PROMPTS[:2], DecodeSettings(max_new_tokens=0))
    with pytest.raises(ValueError, match="keeps exited tokens' K/V by 'fill' but the mode needs 'skip'"):
        generate_batch(make_strategy("early-exit", heads, policy, kv="skip"), engine, PROMPTS[:2], settings)
    shallow = BatchedExitEngine(adapter, exit_layers=[1], batch_size=2)
    with pytest.raises(ValueError, match=r"do not end at exit layers \[3\]"):
        generate_batch(strategy, shallow, PROMPTS[:2], settings)
    assert engine.sequences == [] and shallow.sequences == []  # nothing was decoded

    class Other:
        name, kv, heads, exit_layers = "sampling", "fill", None, []

    with pytest.raises(
        ValueError, match="mode 'sampling' has no batched decoding; batched modes: full, early-exit"
    ):
        generate_batch(Other(), adapter, PROMPTS[:2], settings)


def test_cuda_graphs_are_refused_for_a_batch_naming_why(rule_case):
    _, adapter, heads, policy = rule_case
    strategy = make_strategy("dssd", heads, policy)
    graphed = engine_for(strategy, adapter, graphs=ReplayCapture)
    with pytest.raises(ValueError, match="batch-1 shapes"):
        generate_batch(strategy, graphed, PROMPTS[:2], DecodeSettings(max_new_tokens=4))
    with pytest.raises(ValueError, match="CUDA graphs cannot decode a batch"):
        BatchedExitEngine(adapter, [1, 3], batch_size=2, graphs=ReplayCapture)
    # One prompt on the graphed engine is today's path, graphs and all.
    result = generate_batch(strategy, graphed, PROMPTS[:1], DecodeSettings(max_new_tokens=4))
    assert isinstance(graphed, ExitEngine) and len(result.ids[0]) == 4


@pytest.mark.parametrize("label", ["early-exit-fill", "dssd", "del"])
def test_each_prompt_keeps_its_own_settings_in_a_batch(rule_case, family, label):
    """A workload's prompts carry their own budgets and stops; EOS may differ too."""
    _, adapter, heads, policy = rule_case
    strategy = strategy_for(label, heads, policy)
    stop = StopCheck(Stop(STOP[family]), letters)
    own = [
        DecodeSettings(max_new_tokens=3),
        DecodeSettings(max_new_tokens=14, stop=stop),
        DecodeSettings(max_new_tokens=11, eos_token_id=EOS[family]),
        DecodeSettings(max_new_tokens=6, stop=stop),
        DecodeSettings(max_new_tokens=14),
    ]
    engine = engine_for(strategy, adapter)
    alone = [strategy.generate(engine, p, s).ids for p, s in zip(PROMPTS, own, strict=True)]
    batch = generate_batch(strategy, adapter, PROMPTS, own)
    assert batch.ids == alone
    assert len(batch.ids[0]) == 3 and len(batch.ids[3]) <= 6
    with pytest.raises(ValueError, match="4 settings for 5 prompts"):
        generate_batch(strategy, adapter, PROMPTS, own[:4])
