"""Analytic FLOPs agree with torch's FlopCounterMode on what was actually run (within 5%).

The models use eager attention: FlopCounterMode does not count CPU SDPA kernels, while it
does count eager attention's matmuls. Prompts are long enough that attention is well over
5% of the total, so a wrong attention term (e.g. the wrong KV length) fails the check.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt_neox, tiny_llama
from torch.utils.flop_counter import FlopCounterMode

from earlyexit.decoding import (
    DecodeSettings,
    DSSDDecoding,
    EarlyExitDecoding,
    FullDecoding,
    LayerSkipDecoding,
)
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model import engine as engine_module
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine


def measured_and_analytic(strategy, adapter, heads, prompt, settings):
    engine = ExitEngine(adapter, exit_layers=strategy.exit_layers)
    before = heads.flops if heads is not None else 0
    with FlopCounterMode(display=False) as counter:
        result = strategy.generate(engine, prompt, settings)
    # The strategy's stats exclude the prefill; add it back (full depth over the prompt).
    prefill = ExitEngine(adapter).forward(prompt).flops
    return (
        counter.get_total_flops(),
        result.stats.flops + prefill,
        result,
        (heads.flops - before if heads else 0),
    )


@pytest.mark.parametrize("arch", ["linear", "lowrank", "mlp"])
def test_analytic_flops_match_the_flop_counter(arch, monkeypatch):
    model = tiny_gpt_neox(layers=6, hidden=64, vocab=211, seed=1, attn="eager").float()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec(arch, (1, 3)))
    prompt = torch.randint(0, 211, (60,), generator=torch.Generator().manual_seed(0))
    settings = DecodeSettings(max_new_tokens=12)
    # Thresholds that fire at both heads on some tokens and at neither on others.
    scores = [heads(k, torch.randn(40, 64)).softmax(-1).max(-1).values for k in (1, 3)]
    policy = ThresholdPolicy(
        heads, "max-prob", {1: scores[0].quantile(0.7).item(), 3: scores[1].median().item()}
    )
    strategies = [
        FullDecoding(),
        EarlyExitDecoding(policy),
        LayerSkipDecoding(heads, 3, 3),
        DSSDDecoding(policy, max_draft=4),
    ]
    for strategy in strategies:
        measured, analytic, result, _ = measured_and_analytic(strategy, adapter, heads, prompt, settings)
        assert abs(analytic - measured) <= 0.05 * measured, (strategy.name, analytic, measured)
    # The check is sensitive: without its attention term the estimate misses by more than 5%.
    monkeypatch.setattr(engine_module, "attention_flops", lambda adapter, kv_len: 0)
    measured, analytic, _, _ = measured_and_analytic(FullDecoding(), adapter, heads, prompt, settings)
    assert abs(analytic - measured) > 0.05 * measured
    assert result.stats.drafted > 0


def test_flops_follow_the_exits():
    model = tiny_gpt_neox(layers=6, hidden=64, vocab=211, seed=2).float()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("lowrank", (1,)))
    prompt = torch.randint(0, 211, (5,), generator=torch.Generator().manual_seed(1))
    settings = DecodeSettings(max_new_tokens=10)
    full = FullDecoding().generate(ExitEngine(adapter), prompt, settings).stats
    always = ThresholdPolicy(heads, "entropy", {1: -float("inf")})
    early = EarlyExitDecoding(always).generate(ExitEngine(adapter, exit_layers=[1]), prompt, settings).stats
    assert early.exit_histogram == {1: 9}
    assert early.flops_per_token < 0.6 * full.flops_per_token


def test_llama_flops_match_the_flop_counter():
    model = tiny_llama(seed=3, attn="eager").float()
    adapter = get_adapter(model)
    prompt = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(2))
    measured, analytic, _, _ = measured_and_analytic(FullDecoding(), adapter, None, prompt, DecodeSettings(8))
    assert abs(analytic - measured) <= 0.05 * measured
