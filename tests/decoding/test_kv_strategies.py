"""Exited tokens' K/V under `propagate` and `skip`, against a reference that shares no engine code.

The reference recomputes the whole sequence at every step, layer by layer with the model's own
layer modules and a full causal mask, under the strategy's rule for each token that exited at
layer e: at every layer j > e its state stays frozen at its exit state. `propagate` lets later
tokens attend to the K/V the layer computes from that frozen state (CALM's state propagation);
`skip` masks it out of their attention. Float64 tiny random models, Llama and GPT-NeoX: the
engine's tokens and exits must equal the reference's, token for token and exit for exit.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from conftest import naive_rule_step, prompts

from earlyexit.decoding import (
    DecodeSettings,
    DSSDDecoding,
    EarlyExitDecoding,
    engine_for,
    make_strategy,
)
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.engine import ExitEngine


def naive_rule_decode(model, policy, prompt, max_new, rule):
    """Greedy decoding by brute force under `rule`: every step is `naive_rule_step` over the whole
    sequence. A decode step (not the first token, which the prefill gives at full depth) may exit;
    the fed token's exit layer then governs its state at deeper layers in every later step.
    Returns tokens, exit counts and the logits each decode step emitted."""
    last = model.config.num_hidden_layers - 1
    ids, exit_of, out, exits, emitted = prompt.tolist(), [last] * prompt.numel(), [], Counter(), []
    while len(out) < max_new:
        logits, layer = naive_rule_step(model, ids, exit_of[:-1], rule, policy if out else None)
        if out:
            exit_of[-1] = layer  # the fed token (the last one) left at `layer`
            exits[layer] += 1
            emitted.append(logits)
        out.append(int(logits.argmax()))
        ids.append(out[-1])
        exit_of.append(last)
    return out, exits, emitted


def engine_decode(strategy, engine, prompt, settings):
    """The strategy's result and the logits each of its decode passes emitted."""
    emitted, inner = [], engine.forward

    def forward(ids, exit_check=None):
        out = inner(ids, exit_check)
        emitted.append(out.logits)
        return out

    engine.forward = forward
    try:
        result = strategy.generate(engine, prompt, settings)
    finally:
        del engine.forward
    return result, emitted[1:]  # the first pass is the prefill


@pytest.mark.parametrize("rule", ["propagate", "skip", "fill"])
def test_early_exit_equals_the_naive_recompute_under_its_rule(rule_case, rule):
    model, adapter, _, policy = rule_case
    strategy = EarlyExitDecoding(policy, kv=rule)
    engine = engine_for(strategy, adapter)
    settings = DecodeSettings(max_new_tokens=10)
    exited, off_fill = 0, 0.0
    for prompt in prompts(12, seed=4):
        result, logits = engine_decode(strategy, engine, prompt, settings)
        expected, exits, ref_logits = naive_rule_decode(model, policy, prompt, 10, rule)
        assert result.ids == expected, (rule, prompt.tolist())
        assert result.stats.exit_histogram == exits, (rule, prompt.tolist())
        assert len(logits) == len(ref_logits)
        for mine, ref in zip(logits, ref_logits, strict=True):
            torch.testing.assert_close(mine, ref, rtol=0, atol=1e-9)
        exited += sum(n for k, n in exits.items() if k < adapter.num_layers - 1)
        fill = naive_rule_decode(model, policy, prompt, 10, "fill")
        if fill[0] == expected:  # same tokens: the logits show whether the rule changed anything
            gaps = [float((a - b).abs().max()) for a, b in zip(ref_logits, fill[2], strict=True)]
            off_fill = max(off_fill, *gaps)
        else:
            off_fill = math.inf
    assert exited >= 12, "heads must fire often for the rule to matter"
    # The rules are not fill in disguise: somewhere their computation parts from the exact one.
    assert (off_fill > 1e-6) == (rule != "fill"), off_fill


def test_propagate_writes_the_projected_kv_and_skip_writes_none(rule_case):
    _, adapter, heads, _ = rule_case
    always = ThresholdPolicy(heads, "entropy", {1: -math.inf, 3: -math.inf})  # every decode step exits at 1
    prompt = torch.arange(5)
    for rule in ("propagate", "skip"):
        engine = ExitEngine(adapter, exit_layers=[1, 3], kv=rule)
        result = EarlyExitDecoding(always, kv=rule).generate(engine, prompt, DecodeSettings(4))
        assert result.stats.exit_histogram == {1: 3}
        trace = result.stats.trace
        deeper = adapter.num_layers - 2  # layers 2..L-1 of each exited token
        if rule == "propagate":
            assert trace.projections == {(deeper, 1): 3}
            assert engine._layer_len == [0] * adapter.num_layers  # packed slots are skip's alone
        else:
            assert not trace.projections
            # Layers 0-1 hold the prompt and the 3 fed tokens; deeper layers hold the prompt only.
            assert engine._layer_len == [8, 8] + [5] * deeper
        assert trace.layer_rows == 3 * 2  # two layers per decode step, nothing filled later


def test_skip_cannot_roll_back(rule_case):
    _, adapter, _, _ = rule_case
    engine = ExitEngine(adapter, kv="skip")
    engine.forward(torch.arange(4))
    with pytest.raises(ValueError, match="kv=skip cannot roll back"):
        engine.truncate(2)


def test_lossless_modes_refuse_a_lossy_kv_strategy(rule_case):
    _, adapter, heads, policy = rule_case
    with pytest.raises(ValueError, match="engine.kv=propagate is lossy and mode dssd accepts only fill"):
        make_strategy("dssd", heads, policy, kv="propagate")
    with pytest.raises(ValueError, match=r"unknown KV strategy 'copy'; valid: fill, propagate, skip"):
        make_strategy("early-exit", heads, policy, kv="copy")
    # An engine of another strategy is refused by the mode, naming both.
    engine = ExitEngine(adapter, exit_layers=policy.exit_layers, kv="skip")
    with pytest.raises(ValueError, match="keeps exited tokens' K/V by 'skip' but the mode needs 'fill'"):
        DSSDDecoding(policy).generate(engine, torch.arange(4), DecodeSettings(3))
