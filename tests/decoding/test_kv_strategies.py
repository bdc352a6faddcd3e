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
from conftest import damped_llama, damped_model, prompts, quantile_thresholds

from earlyexit.decoding import (
    DecodeSettings,
    DSSDDecoding,
    EarlyExitDecoding,
    engine_for,
    make_strategy,
)
from earlyexit.exits.confidence import get_metric
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine


def _layers_embed_rotary_norm(model):
    base = model.gpt_neox if hasattr(model, "gpt_neox") else model.model
    embed = base.embed_in if hasattr(base, "embed_in") else base.embed_tokens
    norm = base.final_layer_norm if hasattr(base, "final_layer_norm") else base.norm
    return base.layers, embed, base.rotary_emb, norm


@torch.no_grad()
def naive_rule_decode(model, heads, prompt, max_new, metric, thresholds, rule):
    """Greedy decoding by brute force under `rule` ("fill", "propagate" or "skip").

    A decode step (not the first token, which the prefill gives at full depth) leaves at the
    first head in depth order whose score passes; that token's exit layer then governs its state
    at deeper layers in every later step's recomputation. Returns tokens, exit counts and the
    logits each decode step emitted.
    """
    layers, embed, rotary, norm = _layers_embed_rotary_norm(model)
    last = len(layers) - 1
    ids, exit_of, out, exits, emitted = prompt.tolist(), [last] * prompt.numel(), [], Counter(), []
    while len(out) < max_new:
        n = len(ids)
        h = embed(torch.tensor([ids]))
        pos = torch.arange(n)
        pos_emb = rotary(h, pos[None])
        causal = pos[None, :] <= pos[:, None]
        token, layer, logits = None, last, None
        for j, module in enumerate(layers):
            frozen = torch.tensor([e < j for e in exit_of])
            mask = causal & ~frozen[None, :] if rule == "skip" else causal
            mask = mask | torch.eye(n, dtype=torch.bool)  # a frozen row's output is discarded anyway
            new = module(h, attention_mask=mask[None, None], position_embeddings=pos_emb)
            new = new[0] if isinstance(new, tuple) else new
            h = new if rule == "fill" else torch.where(frozen[None, :, None], h, new)
            if out and j in thresholds:
                head_logits = heads(j, h[0, -1])
                score = float(get_metric(metric)(head_logits))
                if math.isfinite(score) and score >= thresholds[j]:
                    token, layer, logits = int(head_logits.argmax()), j, head_logits
                    break
        if token is None:
            logits = model.get_output_embeddings()(norm(h[0, -1]))
            token = int(logits.argmax())
        if out:
            exit_of[-1] = layer  # the fed token (the last one) left at `layer`
            exits[layer] += 1
            emitted.append(logits)
        out.append(token)
        ids.append(token)
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


CASES = {  # name: (model, head layers, metric, quantile of scores used as threshold)
    "llama": (lambda: damped_llama(0), (1, 3), "max-prob", 0.4),
    "neox": (lambda: damped_model(2).double(), (1, 3), "entropy", 0.5),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    build, layers, metric, q = CASES[request.param]
    model = build()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("linear", layers))
    thresholds = quantile_thresholds(adapter, heads, metric, q)
    return model, adapter, heads, ThresholdPolicy(heads, metric, thresholds)


@pytest.mark.parametrize("rule", ["propagate", "skip", "fill"])
def test_early_exit_equals_the_naive_recompute_under_its_rule(case, rule):
    model, adapter, heads, policy = case
    strategy = EarlyExitDecoding(policy, kv=rule)
    engine = engine_for(strategy, adapter)
    settings = DecodeSettings(max_new_tokens=10)
    exited, off_fill = 0, 0.0
    for prompt in prompts(12, seed=4):
        result, logits = engine_decode(strategy, engine, prompt, settings)
        expected, exits, ref_logits = naive_rule_decode(
            model, heads, prompt, 10, policy.metric.name, policy.thresholds, rule
        )
        assert result.ids == expected, (rule, prompt.tolist())
        assert result.stats.exit_histogram == exits, (rule, prompt.tolist())
        assert len(logits) == len(ref_logits)
        for mine, ref in zip(logits, ref_logits, strict=True):
            torch.testing.assert_close(mine, ref, rtol=0, atol=1e-9)
        exited += sum(n for k, n in exits.items() if k < adapter.num_layers - 1)
        fill = naive_rule_decode(model, heads, prompt, 10, policy.metric.name, policy.thresholds, "fill")
        if fill[0] == expected:  # same tokens: the logits show whether the rule changed anything
            gaps = [float((a - b).abs().max()) for a, b in zip(ref_logits, fill[2], strict=True)]
            off_fill = max(off_fill, *gaps)
        else:
            off_fill = math.inf
    assert exited >= 12, "heads must fire often for the rule to matter"
    # The rules are not fill in disguise: somewhere their computation parts from the exact one.
    assert (off_fill > 1e-6) == (rule != "fill"), off_fill


def test_propagate_writes_the_projected_kv_and_skip_writes_none(case):
    _, adapter, heads, _ = case
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


def test_skip_cannot_roll_back(case):
    _, adapter, _, _ = case
    engine = ExitEngine(adapter, kv="skip")
    engine.forward(torch.arange(4))
    with pytest.raises(ValueError, match="kv=skip cannot roll back"):
        engine.truncate(2)


def test_lossless_modes_refuse_a_lossy_kv_strategy(case):
    _, adapter, heads, policy = case
    with pytest.raises(ValueError, match="engine.kv=propagate is lossy and mode dssd accepts only fill"):
        make_strategy("dssd", heads, policy, kv="propagate")
    with pytest.raises(ValueError, match=r"unknown KV strategy 'copy'; valid: fill, propagate, skip"):
        make_strategy("early-exit", heads, policy, kv="copy")
    # An engine of another strategy is refused by the mode, naming both.
    engine = ExitEngine(adapter, exit_layers=policy.exit_layers, kv="skip")
    with pytest.raises(ValueError, match="keeps exited tokens' K/V by 'skip' but the mode needs 'fill'"):
        DSSDDecoding(policy).generate(engine, torch.arange(4), DecodeSettings(3))
