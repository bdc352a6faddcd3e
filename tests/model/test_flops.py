"""Analytic FLOPs equal torch's FlopCounterMode exactly, pass by pass: prefill and decode apart.

Every engine pass is counted twice: by FlopCounterMode around the call and by the engine's
own analytic count of that pass (plus the FLOPs the heads record for the heads it evaluated).
Equality is exact, so any term that is missing or wrong (heads, unembedding, the attended KV
length) fails, however small its share. The models use eager attention: FlopCounterMode does
not count CPU SDPA kernels, while it does count eager attention's matmuls.
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
    engine_for,
)
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import GraphCache, ReplayCapture

D, V, LAYERS, PROMPT = 64, 211, 6, 60


class PassCounter:
    """Wraps `engine.forward`: (FlopCounterMode's count, analytic count) for every pass."""

    def __init__(self, engine: ExitEngine, heads: HeadSet | None) -> None:
        self.passes: list[tuple[int, int]] = []
        inner = engine.forward

        def forward(ids, exit_check=None):
            before = heads.flops if heads is not None else 0
            with FlopCounterMode(display=False) as counter:
                out = inner(ids, exit_check)
            head_flops = (heads.flops if heads is not None else 0) - before
            self.passes.append((counter.get_total_flops(), out.flops + head_flops))
            return out

        engine.forward = forward


def hand_prefill_flops(n: int, d: int = D, vocab: int = V, layers: int = LAYERS) -> int:
    """GPT-NeoX, intermediate 4d: 12 d^2 weights per layer (2 FLOPs each per row), attention
    QK^T and AV over all n keys for every row, and the unembedding."""
    return layers * (2 * 12 * d * d * n + 4 * d * n * n) + 2 * d * vocab * n


def check_passes(strategy, adapter, heads, prompt, settings, graphs=False):
    engine = engine_for(strategy, adapter, graphs=ReplayCapture if graphs else None)
    if graphs:
        heads.graphs = GraphCache(ReplayCapture)
        strategy.generate(engine, prompt, settings)  # capture every graph first (capture runs the body)
    counter = PassCounter(engine, heads)
    try:
        result = strategy.generate(engine, prompt, settings)
    finally:
        if heads is not None:
            heads.graphs = None
    (prefill_counted, prefill_analytic), *decode = counter.passes
    assert prefill_analytic == prefill_counted, (strategy.name, "prefill")
    for i, (counted, analytic) in enumerate(decode):
        assert analytic == counted, (strategy.name, f"decode pass {i}")
    # The reported statistics are the decode passes alone, heads included.
    assert result.stats.flops == sum(counted for counted, _ in decode), strategy.name
    assert len(decode) == result.stats.forward_passes - 1
    return prefill_counted, result


@pytest.fixture(scope="module")
def setting():
    model = tiny_gpt_neox(layers=LAYERS, hidden=D, vocab=V, seed=1, attn="eager").float()
    adapter = get_adapter(model)
    prompt = torch.randint(0, V, (PROMPT,), generator=torch.Generator().manual_seed(0))
    return adapter, prompt


def policy_for(heads: HeadSet) -> ThresholdPolicy:
    """Thresholds that fire at both heads on some tokens and at neither on others."""
    hidden = torch.randn(40, D, generator=torch.Generator().manual_seed(5))
    scores = [heads(k, hidden).softmax(-1).max(-1).values for k in (1, 3)]
    heads.flops = 0
    return ThresholdPolicy(
        heads, "max-prob", {1: scores[0].quantile(0.7).item(), 3: scores[1].median().item()}
    )


@pytest.mark.parametrize("arch", ["linear", "lowrank", "mlp"])
def test_every_pass_matches_the_flop_counter_exactly(arch, setting):
    adapter, prompt = setting
    heads = HeadSet(adapter, HeadSpec(arch, (1, 3)))
    if arch == "mlp":  # a real MLP correction, not the zero-initialised one
        for head in heads.heads.values():
            torch.nn.init.normal_(head.down.weight, std=0.05)
    policy = policy_for(heads)
    settings = DecodeSettings(max_new_tokens=12)
    strategies = [
        FullDecoding(),
        EarlyExitDecoding(policy),
        EarlyExitDecoding(policy, kv="propagate"),  # + the exited tokens' K/V projections
        EarlyExitDecoding(policy, kv="skip"),  # attention over each layer's own entries
        LayerSkipDecoding(heads, 3, 3),
        DSSDDecoding(policy, max_draft=4),
    ]
    drafted = exited = 0
    for strategy in strategies:
        prefill, result = check_passes(strategy, adapter, heads, prompt, settings)
        assert prefill == hand_prefill_flops(PROMPT), strategy.name
        drafted += result.stats.drafted
        exited += sum(n for k, n in result.stats.exit_histogram.items() if k < LAYERS - 1)
    assert drafted > 0 and exited > 0, "heads must fire for the head terms to be checked"


@pytest.mark.parametrize("kv", ["fill", "propagate", "skip"])
def test_graphed_passes_count_the_kv_bucket_they_attend_over(setting, kv):
    adapter, prompt = setting
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    policy = policy_for(heads)
    strategy = DSSDDecoding(policy, max_draft=3) if kv == "fill" else EarlyExitDecoding(policy, kv=kv)
    prefill, result = check_passes(strategy, adapter, heads, prompt, DecodeSettings(10), graphs=True)
    assert prefill == hand_prefill_flops(PROMPT)
    assert any(layer < LAYERS - 1 for layer in result.stats.exit_histogram), "heads must fire"


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
    # Every token exits, so fill never runs a deeper pass here; propagate adds exactly the K/V
    # projections of the 4 skipped layers per token (2 x d x 2d each), skip nothing.
    per_kv = {}
    for kv in ("fill", "propagate", "skip"):
        strategy = EarlyExitDecoding(always, kv=kv)
        per_kv[kv] = strategy.generate(engine_for(strategy, adapter), prompt, settings).stats.flops_per_token
    assert per_kv["fill"] == per_kv["skip"] == early.flops_per_token
    assert per_kv["propagate"] - per_kv["skip"] == 4 * 2 * 64 * 2 * 64


def test_llama_passes_match_the_flop_counter_exactly():
    model = tiny_llama(seed=3, attn="eager").float()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("linear", (1,)))
    prompt = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(2))
    for strategy in (FullDecoding(), LayerSkipDecoding(heads, 1, 2)):
        check_passes(strategy, adapter, heads, prompt, DecodeSettings(8))
