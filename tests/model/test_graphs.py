"""Graph replay of segments and heads changes no token and no logit beyond rounding.

On CPU the graphs are `ReplayCapture` (same static-input contract as CUDA graphs); the
last test captures real CUDA graphs and runs only where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from conftest import damped_model, prompts, quantile_thresholds, tiny_gpt_neox

from earlyexit.decoding import (
    DecodeSettings,
    DSSDDecoding,
    EarlyExitDecoding,
    FullDecoding,
    LayerSkipDecoding,
)
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.measure.protocol import measure_decoding
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import CudaGraph, GraphCache, ReplayCapture, default_capture, kv_bucket


def test_kv_bucket_rounds_up_to_a_power_of_two_within_the_cache():
    assert [kv_bucket(n, 2048) for n in (1, 64, 65, 128, 129, 1000, 2048)] == [
        64,
        64,
        128,
        128,
        256,
        1024,
        2048,
    ]
    assert kv_bucket(100, 100) == 100  # capped at a cache that is not a power of two
    assert kv_bucket(3, 16) == 16
    with pytest.raises(ValueError, match="exceeds the cache of 16"):
        kv_bucket(17, 16)


def test_graph_cache_captures_once_per_key_and_hands_out_copies():
    weight = torch.randn(4, 4)
    cache = GraphCache(ReplayCapture)
    a, b = torch.randn(4), torch.randn(4)
    out_a = cache.run(("k",), (a,), lambda x: x @ weight)
    out_a_kept = out_a.clone()
    out_b = cache.run(("k",), (b,), lambda x: x @ weight)
    assert len(cache) == 1 and cache.replays == 2
    assert torch.allclose(out_b, b @ weight)
    assert torch.equal(out_a, out_a_kept), "a later replay overwrote an earlier result"
    out_b.zero_()
    assert torch.allclose(cache.run(("k",), (b,), lambda x: x @ weight), b @ weight)
    cache.run(("other",), (a,), lambda x: x @ weight)
    assert len(cache) == 2


def test_cpu_has_no_cuda_graphs():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, got 'cpu'"):
        default_capture("cpu")


@pytest.mark.parametrize("seed", range(3))
def test_graphed_engine_matches_eager_with_mixed_exits(seed):
    """Exited tokens' hidden states must survive later replays of the same segment graph."""
    model = tiny_gpt_neox(layers=8, seed=seed)
    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (40,), generator=gen)
    exit_layers = [1, 3, 4, 6]
    eager = ExitEngine(adapter, exit_layers=exit_layers)
    graphed = ExitEngine(adapter, exit_layers=exit_layers, graphs=ReplayCapture, max_graph_rows=3)
    for engine in (eager, graphed):
        engine.forward(ids[:4])
    choices = [*exit_layers, None]
    for t in range(4, 40):
        target = choices[torch.randint(0, len(choices), (1,), generator=gen).item()]

        def check(layer, h, target=target):
            return h.new_zeros(1) if layer == target else None

        a, b = eager.forward(ids[t : t + 1], check), graphed.forward(ids[t : t + 1], check)
        assert a.exit_layer == b.exit_layer
        if a.final_logits is not None:
            assert a.final_positions == b.final_positions
            assert (a.final_logits - b.final_logits).abs().max().item() <= 1e-9
    keys = list(graphed.graphs.graphs)
    assert {k[0] for k in keys} == {"segment", "unembed"}
    assert max(k[-2] if k[0] == "segment" else k[1] for k in keys) <= 3, "larger passes run eagerly"
    assert {k[-1] for k in keys if k[0] == "segment"} == {64}, "KV lengths 5..40 share one bucket"


def _modes(adapter, heads):
    policy = ThresholdPolicy(heads, "entropy", quantile_thresholds(adapter, heads, "entropy", 0.3))
    return [
        FullDecoding(),
        EarlyExitDecoding(policy),
        LayerSkipDecoding(heads, heads.layers[-1], 3),
        DSSDDecoding(policy, max_draft=4),
    ]


@pytest.mark.parametrize(("seed", "arch"), [(0, "shared"), (1, "lowrank")])
def test_every_mode_gives_the_same_tokens_with_graphs(seed, arch):
    model = damped_model(seed).double()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec(arch, (1, 3)))
    prompt_list = prompts(50, seed)
    settings = DecodeSettings(max_new_tokens=12)
    reference = None
    for mode in _modes(adapter, heads):
        eager = ExitEngine(adapter, exit_layers=mode.exit_layers)
        graphed = ExitEngine(adapter, exit_layers=mode.exit_layers, graphs=ReplayCapture)
        want = [mode.generate(eager, p, settings) for p in prompt_list]
        heads.graphs = GraphCache(ReplayCapture)
        try:
            got = [mode.generate(graphed, p, settings) for p in prompt_list]
        finally:
            heads.graphs, head_graphs = None, heads.graphs
        assert [g.ids for g in got] == [w.ids for w in want], mode.name
        assert [g.stats.exit_histogram for g in got] == [w.stats.exit_histogram for w in want]
        reference = reference or [w.ids for w in want]
        if mode.name != "early-exit":
            assert [g.ids for g in got] == reference, f"{mode.name} with graphs is not lossless"
        if mode.heads is not None:
            assert head_graphs.replays > 0, f"{mode.name} evaluated no head through a graph"
        assert len(graphed.graphs) > 0


def test_graphed_decoding_crosses_kv_buckets():
    """Prompts just below 64, 128 and 256 tokens: decoding crosses into the next KV bucket (a new
    set of graphs) mid-generation, drafts and verification rows included; no token changes."""
    model = damped_model(5, max_positions=512).double()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    gen = torch.Generator().manual_seed(5)
    prompt_list = [torch.randint(0, 97, (n,), generator=gen) for n in (58, 122, 250)]
    settings = DecodeSettings(max_new_tokens=12)
    reference, buckets = None, set()
    for mode in _modes(adapter, heads):
        eager = ExitEngine(adapter, exit_layers=mode.exit_layers)
        graphed = ExitEngine(adapter, exit_layers=mode.exit_layers, graphs=ReplayCapture)
        want = [mode.generate(eager, p, settings) for p in prompt_list]
        got = [mode.generate(graphed, p, settings) for p in prompt_list]
        assert [g.ids for g in got] == [w.ids for w in want], mode.name
        assert [g.stats.exit_histogram for g in got] == [w.stats.exit_histogram for w in want]
        reference = reference or [w.ids for w in want]
        if mode.name != "early-exit":
            assert [g.ids for g in got] == reference, f"{mode.name} with graphs is not lossless"
        buckets |= {key[-1] for key in graphed.graphs.graphs if key[0] == "segment"}
    assert buckets == {64, 128, 256, 512}


def test_measure_decoding_with_graphs_restores_the_heads():
    model = damped_model(2)
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (2,)))
    mode = LayerSkipDecoding(heads, 2, 2)
    prompt_list = prompts(4, 2)
    settings = DecodeSettings(max_new_tokens=6)
    eager_ids, _ = measure_decoding(mode, adapter, prompt_list, settings, repeats=1)
    ids, stats = measure_decoding(mode, adapter, prompt_list, settings, repeats=1, graphs=ReplayCapture)
    assert ids == eager_ids
    assert stats["graphs_captured"] > 0
    assert heads.graphs is None


def test_no_graph_is_captured_inside_a_timed_decode():
    """Capture is slow (and on CUDA synchronises): warm-up must reach every graph first."""
    model = damped_model(4)
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    mode = DSSDDecoding(
        ThresholdPolicy(heads, "entropy", quantile_thresholds(adapter, heads, "entropy", 0.3)), 4
    )
    captured, after_each_call = [], []

    def counting_capture(body):
        captured.append(1)
        return ReplayCapture(body)

    class Spy:
        name, exit_layers, heads = mode.name, mode.exit_layers, mode.heads

        def generate(self, engine, prompt, settings):
            result = mode.generate(engine, prompt, settings)
            after_each_call.append(len(captured))
            return result

    prompt_list = prompts(6, 4)
    _, stats = measure_decoding(
        Spy(), adapter, prompt_list, DecodeSettings(max_new_tokens=10), repeats=2, graphs=counting_capture
    )
    warmup_calls = 1 + len(prompt_list)
    assert len(after_each_call) == warmup_calls + 2 * len(prompt_list)
    assert set(after_each_call[warmup_calls - 1 :]) == {len(captured)} == {stats["graphs_captured"]}
    assert after_each_call[0] < len(captured), "one prompt alone should not reach every graph"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_are_lossless_on_gpu():
    model = damped_model(3).cuda()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    prompt_list = [p.cuda() for p in prompts(20, 3)]
    settings = DecodeSettings(max_new_tokens=12)
    modes = _modes(adapter, heads)
    reference, _ = measure_decoding(modes[0], adapter, prompt_list, settings, repeats=1)
    for mode in modes:
        if mode.name == "early-exit":
            continue
        ids, stats = measure_decoding(mode, adapter, prompt_list, settings, repeats=1, graphs=CudaGraph)
        assert ids == reference, mode.name
        assert stats["graphs_captured"] > 0
