"""Decoding against references that share no code with the engine.

- A naive decoder recomputes the whole sequence with `model(ids)` at every step (no KV cache,
  no engine, no pending tokens) and applies the exit rule to the hidden states it returns:
  `full` and `early-exit` must reproduce it token for token (and exit for exit), and the
  lossless modes must reproduce `full`. Llama and GPT-NeoX, linear and `mlp` heads.
- The layer modules' own calls (forward hooks) against a hand model of which rows each pass
  must compute, and against the engine's accounting (`StepOutput.layer_rows`,
  `DecodeStats.layer_rows`): verification runs only the layers above each draft's exit.
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
    FullDecoding,
    LayerSkipDecoding,
)
from earlyexit.exits.confidence import get_metric
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine


@torch.no_grad()
def naive_decode(model, heads, prompt, max_new, metric=None, thresholds=None):
    """Greedy decoding by brute force; with thresholds, a decode step (not the first token, which
    the prefill gives at full depth) leaves at the first head in depth order whose score passes.
    Returns the tokens and the exit layer of each decode step."""
    ids, out, exits = prompt.tolist(), [], []
    last = model.config.num_hidden_layers - 1
    while len(out) < max_new:
        result = model(torch.tensor([ids]), output_hidden_states=True)
        token, layer = int(result.logits[0, -1].argmax()), last
        for k in sorted(thresholds or {}) if out else ():
            logits = heads(k, result.hidden_states[k + 1][0, -1])
            score = float(get_metric(metric)(logits))
            if math.isfinite(score) and score >= thresholds[k]:
                token, layer = int(logits.argmax()), k
                break
        exits += [layer] if out else []
        out.append(token)
        ids.append(token)
    return out, Counter(exits)


def decode_all(strategy, adapter, prompt_list, settings):
    engine = ExitEngine(adapter, exit_layers=strategy.exit_layers)
    return [strategy.generate(engine, p, settings) for p in prompt_list]


def mlp_heads(adapter, layers):
    """`mlp` heads with a real (random, non-zero) MLP correction, not the zero-initialised one."""
    heads = HeadSet(adapter, HeadSpec("mlp", layers))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in heads.heads.values():
            for linear in (head.up, head.down):
                linear.weight.copy_(0.3 * torch.randn(linear.weight.shape, generator=gen))
    return heads


CASES = {  # name: (model, head architecture)
    "llama-linear": (lambda: damped_llama(0), "linear"),
    "neox-mlp": (lambda: damped_model(2).double(), "mlp"),
}


@pytest.mark.parametrize("case", CASES)
def test_every_mode_matches_a_naive_recompute(case):
    build, arch = CASES[case]
    model = build()
    adapter = get_adapter(model)
    heads = mlp_heads(adapter, (1, 3)) if arch == "mlp" else HeadSet(adapter, HeadSpec(arch, (1, 3)))
    prompt_list = prompts(12, 1)
    new = 10
    settings = DecodeSettings(max_new_tokens=new)

    full = decode_all(FullDecoding(), adapter, prompt_list, settings)
    assert [r.ids for r in full] == [naive_decode(model, heads, p, new)[0] for p in prompt_list]

    thresholds = quantile_thresholds(adapter, heads, "entropy", 0.3)
    policy = ThresholdPolicy(heads, "entropy", thresholds)
    early = decode_all(EarlyExitDecoding(policy), adapter, prompt_list, settings)
    for i, (prompt, got) in enumerate(zip(prompt_list, early, strict=True)):
        want_ids, want_exits = naive_decode(model, heads, prompt, new, "entropy", thresholds)
        assert got.ids == want_ids, f"early-exit differs from the naive decoder on prompt {i}"
        assert got.stats.exit_histogram == want_exits, i
    exits = sum((r.stats.exit_histogram for r in early), Counter())
    assert exits[1] > 0 and exits[3] > 0 and exits[5] > 0, exits
    assert [r.ids for r in early] != [r.ids for r in full], "early exit should be lossy here"

    drafted = accepted = 0
    for mode in (
        LayerSkipDecoding(heads, 1, 3),
        LayerSkipDecoding(heads, 3, 2),
        DSSDDecoding(policy, max_draft=4),
    ):
        got = decode_all(mode, adapter, prompt_list, settings)
        assert [r.ids for r in got] == [r.ids for r in full], f"{mode.name} is not lossless on {case}"
        drafted += sum(r.stats.drafted for r in got)
        accepted += sum(r.stats.accepted for r in got)
    assert 0 < accepted < drafted, "both accepted and rejected drafts must occur"


class LayerCalls:
    """Rows each layer module actually ran, per engine pass (forward pre-hooks on the layers)."""

    def __init__(self, engine: ExitEngine) -> None:
        self.current: Counter = Counter()
        self.passes: list[tuple[Counter, object]] = []  # (rows per layer, StepOutput)
        for index, layer in enumerate(engine.adapter.layers):
            layer.register_forward_pre_hook(lambda module, args, index=index: self._seen(index, args))
        inner = engine.forward

        def forward(ids, exit_check=None):
            self.current = Counter()
            out = inner(ids, exit_check)
            self.passes.append((self.current, out))
            return out

        engine.forward = forward

    def _seen(self, index: int, args: tuple) -> None:
        self.current[index] += args[0].shape[1]  # hidden states [1, rows, d]


def expected_rows(passes, num_layers: int, prompt_len: int) -> list[Counter]:
    """By hand: a pass computes layers 0..e (e = its exit layer) for its new token and, for every
    pending token that left at layer k < e, only the layers k+1..e it skipped; those tokens then
    wait at e. A full-depth pass leaves nothing pending. Rejected drafts are dropped by the mode
    after the verification pass, which has already carried them to full depth."""
    rows = [Counter(dict.fromkeys(range(num_layers), prompt_len))]
    waiting: list[int] = []  # the layer each pending token has reached
    for _, out in passes[1:]:
        e = out.exit_layer
        rows.append(Counter({j: 1 + sum(k < j for k in waiting) for j in range(e + 1)}))
        waiting = [] if e == num_layers - 1 else [max(k, e) for k in waiting] + [e]
    return rows


@pytest.mark.parametrize("mode_name", ["layerskip", "dssd", "early-exit"])
def test_passes_run_only_the_layers_each_token_has_not_run(mode_name):
    model = damped_model(3).double()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    policy = ThresholdPolicy(heads, "entropy", quantile_thresholds(adapter, heads, "entropy", 0.3))
    exit_layer = 3
    mode = {
        "layerskip": LayerSkipDecoding(heads, exit_layer, 3),
        "dssd": DSSDDecoding(policy, max_draft=4),
        "early-exit": EarlyExitDecoding(policy),
    }[mode_name]
    num_layers = adapter.num_layers
    total_layer_rows = 0
    verified_drafts = []
    for prompt in prompts(6, 3):
        engine = ExitEngine(adapter, exit_layers=mode.exit_layers)
        calls = LayerCalls(engine)
        result = mode.generate(engine, prompt, DecodeSettings(max_new_tokens=16))
        want = expected_rows(calls.passes, num_layers, len(prompt))
        for i, ((seen, out), expected) in enumerate(zip(calls.passes, want, strict=True)):
            assert seen == expected, (mode_name, i)
            assert out.layer_rows == sum(seen.values()), (mode_name, i)  # the engine's own accounting
            if i > 0 and out.final_logits is not None and mode_name == "layerskip":
                verified_drafts.append(len(out.final_positions) - 1)
                # Verification: the new token alone below E, the drafts joining it above E.
                assert all(seen[j] == 1 for j in range(exit_layer + 1)), seen
                assert all(seen[j] == len(out.final_positions) for j in range(exit_layer + 1, num_layers))
        decode_rows = sum(out.layer_rows for _, out in calls.passes[1:])
        assert result.stats.layer_rows == decode_rows
        total_layer_rows += decode_rows
    assert total_layer_rows > 0
    if mode_name == "layerskip":
        assert max(verified_drafts) == 3, "full-length draft rounds must be checked"
