"""Decoding modes: speculative modes are lossless (token for token equal to greedy `full`)."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import VOCAB, damped_model, prompts, quantile_thresholds

from earlyexit.decoding import (
    DecodeSettings,
    DSSDDecoding,
    EarlyExitDecoding,
    FullDecoding,
    LayerSkipDecoding,
)
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine


def decode_all(strategy, adapter, prompt_list, settings, max_len=None):
    engine = ExitEngine(adapter, exit_layers=strategy.exit_layers, max_len=max_len)
    return [strategy.generate(engine, p, settings) for p in prompt_list]


def speculative_modes(heads, adapter, draft_lengths=(1, 4), metrics=("entropy", "max-prob", "margin")):
    """LayerSkip at every head layer and draft length, DSSD with every metric (loose thresholds)."""
    modes = [LayerSkipDecoding(heads, layer, k) for layer in heads.layers for k in draft_lengths]
    quantiles = {"entropy": 0.3, "max-prob": 0.6, "margin": 0.0}
    for i, metric in enumerate(metrics):
        policy = ThresholdPolicy(
            heads, metric, quantile_thresholds(adapter, heads, metric, quantiles[metric])
        )
        modes.append(DSSDDecoding(policy, max_draft=5 if i % 2 == 0 else 2))
    return modes


CASES = [  # (seed, head layers, architecture, layerskip draft lengths, dssd metrics)
    (0, (1,), "shared", (1, 5), ("entropy", "margin")),
    (1, (1, 3), "shared", (3,), ("max-prob",)),
    (2, (2, 4), "lowrank", (4,), ("margin", "entropy")),
    (3, (0, 2, 3), "linear", (2,), ("entropy",)),
]


@pytest.mark.parametrize(("seed", "layers", "arch", "draft_lengths", "metrics"), CASES)
def test_speculative_modes_equal_greedy_on_random_models(seed, layers, arch, draft_lengths, metrics):
    model = damped_model(seed)
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec(arch, layers))
    prompt_list = prompts(50, seed)
    settings = DecodeSettings(max_new_tokens=12)
    reference = decode_all(FullDecoding(), adapter, prompt_list, settings)
    # An EOS that greedy decoding actually emits, so drafts hit it.
    emitted = torch.tensor([t for r in reference for t in r.ids])
    eos = int(emitted.bincount().argmax())
    eos_settings = DecodeSettings(max_new_tokens=12, eos_token_id=eos)
    eos_reference = decode_all(FullDecoding(), adapter, prompt_list, eos_settings)
    assert any(len(r.ids) < 12 for r in eos_reference), "EOS should end some generations early"
    drafted = accepted = 0
    for mode in speculative_modes(heads, adapter, draft_lengths, metrics):
        for ref_runs, s in ((reference, settings), (eos_reference, eos_settings)):
            got = decode_all(mode, adapter, prompt_list, s)
            for i, (g, r) in enumerate(zip(got, ref_runs, strict=True)):
                assert g.ids == r.ids, f"{mode.name} differs from greedy on prompt {i}"
                drafted += g.stats.drafted
                accepted += g.stats.accepted
    assert 0 < accepted < drafted, "both accepted and rejected drafts must occur"


def test_speculative_modes_stop_at_the_context_limit():
    model = damped_model(5)
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    prompt_list = prompts(50, 5, max_len=6)
    settings = DecodeSettings(max_new_tokens=40)
    reference = decode_all(FullDecoding(), adapter, prompt_list, settings, max_len=16)
    assert all(len(p) + len(r.ids) == 16 for p, r in zip(prompt_list, reference, strict=True))
    for mode in speculative_modes(heads, adapter, (2,), ("entropy",)):
        got = decode_all(mode, adapter, prompt_list, settings, max_len=16)
        assert [g.ids for g in got] == [r.ids for r in reference], mode.name


def test_full_decoding_equals_transformers_generate():
    model = damped_model(6)
    adapter = get_adapter(model)
    for prompt in prompts(5, 6):
        ours = FullDecoding().generate(ExitEngine(adapter), prompt, DecodeSettings(max_new_tokens=10))
        theirs = model.generate(  # explicit mask: with pad_token_id=0 it would mask prompt zeros
            prompt[None],
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        assert ours.ids == theirs[0, len(prompt) :].tolist()


def test_statistics_are_consistent():
    model = damped_model(7)
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    prompt = prompts(1, 7)[0]
    settings = DecodeSettings(max_new_tokens=20)
    full = FullDecoding().generate(ExitEngine(adapter), prompt, settings).stats
    assert full.tokens == 20 and full.forward_passes == 20
    assert full.layers_per_token == 6 and full.exit_histogram == {5: 19}
    policy = ThresholdPolicy(heads, "max-prob", quantile_thresholds(adapter, heads, "max-prob", 0.5))
    dssd = DSSDDecoding(policy, max_draft=4)
    stats = dssd.generate(ExitEngine(adapter, exit_layers=[1, 3]), prompt, settings).stats
    assert stats.tokens == 20
    assert sum(stats.exit_histogram.values()) == stats.forward_passes - 1  # all but the prefill
    assert stats.exit_histogram[1] + stats.exit_histogram[3] == stats.drafted
    assert 0 <= stats.accepted <= stats.drafted
    assert stats.acceptance_rate == stats.accepted / stats.drafted
    # DSSD's full-model drafts: at most one per cycle, each ending it at full depth.
    assert 0 < stats.full_model_drafts <= stats.forward_passes - 1 - stats.drafted
    assert 0 <= stats.full_model_drafts_accepted <= stats.full_model_drafts
    assert stats.acceptance_rate_demo == pytest.approx(
        (stats.accepted + stats.full_model_drafts_accepted) / (stats.drafted + stats.full_model_drafts)
    )


def test_time_to_first_token_covers_the_prefill_and_nothing_after():
    """An engine whose prefill takes 50 ms and each later pass 60 ms: the timers must say so."""
    adapter = get_adapter(damped_model(7))
    engine = ExitEngine(adapter)
    inner = engine.forward

    def slow_forward(ids, exit_check=None):
        out = inner(ids, exit_check)
        time.sleep(0.05 if engine.length == len(ids) else 0.06)
        return out

    engine.forward = slow_forward
    stats = FullDecoding().generate(engine, prompts(1, 7)[0], DecodeSettings(max_new_tokens=6)).stats
    assert stats.forward_passes == 6
    assert 0.05 <= stats.ttft_s < 0.05 + 0.06, stats.ttft_s
    assert stats.total_s - stats.ttft_s >= 5 * 0.06
    assert stats.tpot_s >= 0.06


def test_early_exit_decoding_uses_heads_and_runs_shallower():
    model = damped_model(8)
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    policy = ThresholdPolicy(heads, "entropy", quantile_thresholds(adapter, heads, "entropy", 0.2))
    engine = ExitEngine(adapter, exit_layers=policy.exit_layers)
    result = EarlyExitDecoding(policy).generate(engine, prompts(1, 8)[0], DecodeSettings(max_new_tokens=30))
    assert result.stats.exit_histogram[1] + result.stats.exit_histogram[3] > 0
    assert result.stats.layers_per_token < 6


@pytest.mark.parametrize(
    ("prompt", "settings", "engine_layers", "message"),
    [
        (torch.tensor([], dtype=torch.long), DecodeSettings(), [1], "empty prompt"),
        (torch.zeros(32, dtype=torch.long), DecodeSettings(), [1], "leaves no room in the context of 32"),
        (
            torch.zeros(3, dtype=torch.long),
            DecodeSettings(max_new_tokens=0),
            [1],
            "max_new_tokens must be >= 1",
        ),
        (torch.zeros(3, dtype=torch.long), DecodeSettings(), [], r"do not end at exit layers \[1\]"),
    ],
)
def test_bad_inputs_fail_before_decoding(prompt, settings, engine_layers, message):
    adapter = get_adapter(damped_model(9))
    heads = HeadSet(adapter, HeadSpec("shared", (1,)))
    engine = ExitEngine(adapter, exit_layers=engine_layers, max_len=32)
    with pytest.raises(ValueError, match=message):
        LayerSkipDecoding(heads, exit_layer=1, draft_length=2).generate(engine, prompt, settings)
    assert engine.length == 0


def test_bad_mode_settings_are_rejected():
    adapter = get_adapter(damped_model(9))
    heads = HeadSet(adapter, HeadSpec("shared", (1,)))
    with pytest.raises(ValueError, match=r"exit layer 4 has no head; head layers: \[1\]"):
        LayerSkipDecoding(heads, exit_layer=4, draft_length=2)
    with pytest.raises(ValueError, match="draft length must be >= 1, got -1"):
        LayerSkipDecoding(heads, exit_layer=1, draft_length=-1)
    with pytest.raises(ValueError, match="max_draft must be >= 1, got 0"):
        DSSDDecoding(ThresholdPolicy(heads, "entropy", {1: -1.0}), max_draft=0)


class ScriptedDrafts:
    """A draft policy that follows a script, one action per drafting pass: "right" drafts the
    full model's greedy token for that position, "wrong" another token, "none" lets no head fire."""

    def __init__(self, engine, prompt_len, reference, script):
        self.engine, self.prompt_len, self.reference, self.script = engine, prompt_len, reference, script

    def __call__(self, layer, hidden):
        action = self.script.pop(0)
        if action == "none":
            return None
        # The fed token sits at position engine.length; the draft predicts the next one.
        right = self.reference[self.engine.length + 1 - self.prompt_len]
        logits = torch.zeros(VOCAB)
        logits[right if action == "right" else (right + 1) % VOCAB] = 1.0
        return logits


def test_acceptance_is_counted_both_ways_on_a_scripted_run():
    """Hand-counted, max_draft 3, 13 tokens (the prefill emits the first):
    cycle 1: right right none  -> 2 head drafts accepted, full-model draft accepted, 4 tokens
    cycle 2: right wrong none  -> 1 of 2 accepted, full-model draft discarded, 6 tokens
    cycle 3: right right right -> 3 of 3 and a bonus; the 4th pass is full because the budget of
                                  drafts is spent: no full-model draft, 10 tokens
    cycle 4: none              -> no head draft, full-model draft accepted, 11 tokens
    cycle 5: wrong none        -> (2 tokens left, so 2 drafts allowed) 0 of 1, full-model draft
                                  discarded, 12 tokens
    cycle 6: right             -> (1 token left) budget spent after it: 1 of 1, 13 tokens
    Head drafts: 7 of 9 accepted; full-model drafts: 2 of 4; as the demo counts: 9 of 13."""
    from earlyexit.decoding.speculative import speculative_generate

    adapter = get_adapter(damped_model(10))
    heads = HeadSet(adapter, HeadSpec("shared", (1,)))
    prompt = prompts(1, 10)[0]
    settings = DecodeSettings(max_new_tokens=13)
    reference = FullDecoding().generate(ExitEngine(adapter), prompt, settings).ids
    script = ["right", "right", "none", "right", "wrong", "none", "right", "right", "right"]
    script += ["none", "wrong", "none", "right"]
    engine = ExitEngine(adapter, exit_layers=[1])
    policy = ScriptedDrafts(engine, len(prompt), reference, script)
    result = speculative_generate(engine, prompt, settings, policy, 3, [1], heads)
    assert result.ids == reference  # lossless whatever the drafts
    assert script == []  # every scripted pass ran
    s = result.stats
    assert (s.drafted, s.accepted, s.full_model_drafts, s.full_model_drafts_accepted) == (9, 7, 4, 2)
    assert s.acceptance_rate == pytest.approx(7 / 9)
    assert s.acceptance_rate_demo == pytest.approx(9 / 13)
    assert s.as_dict()["acceptance_rate_demo"] == pytest.approx(9 / 13)


def test_layerskip_never_has_a_full_model_draft_so_both_rates_agree():
    adapter = get_adapter(damped_model(11))
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    settings = DecodeSettings(max_new_tokens=16)
    for prompt in prompts(3, 11):
        engine = ExitEngine(adapter, exit_layers=[3])
        stats = LayerSkipDecoding(heads, 3, 4).generate(engine, prompt, settings).stats
        assert stats.drafted > 0 and stats.full_model_drafts == 0
        assert stats.acceptance_rate_demo == stats.acceptance_rate
