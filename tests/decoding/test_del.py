"""DEL (`del`): lossless whatever exit layer and draft length it picks, picks them from statistics
that a brute-force recompute reproduces, and adapts: a head that agrees with the model is drafted
from, long; useless heads are not drafted from at all."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import damped_llama, damped_model, prompts, tiny_gpt_neox
from test_references import LayerCalls, expected_rows, mlp_heads, naive_decode
from test_stops import cut_at_stop, letters

from earlyexit.decoding import (
    DecodeSettings,
    DELDecoding,
    FullDecoding,
    Stop,
    StopCheck,
    check_mode,
    make_strategy,
)
from earlyexit.decoding.dynamic_exit import LayerStats, tpl_choice
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.measure.protocol import measure_decoding
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import CudaGraph, GraphCache, ReplayCapture


def decode_all(strategy, adapter, prompt_list, settings, max_len=None):
    engine = ExitEngine(adapter, exit_layers=strategy.exit_layers, max_len=max_len)
    return [strategy.generate(engine, p, settings) for p in prompt_list]


VARIANTS = {  # DEL's settings: the paper's, its no-dynamic-exit ablation, and odd corners
    "paper": {},
    "tpl": {"draft_stop": "tpl"},
    "no-context-no-decay": {"context": 0, "decay": 1.0},
    "short-fast-decay": {"max_draft": 2, "decay": 0.5, "context": 3},
}

CASES = {  # name: (model, head layers, architecture, whether DEL moves its exit layer mid-generation)
    "neox-shared": (lambda: damped_model(0), (1,), "shared", False),
    "neox-linear": (lambda: damped_model(1), (1, 3), "linear", True),
    "neox-lowrank": (lambda: damped_model(2), (2, 4), "lowrank", False),  # layer 2 always wins here
    "neox-three": (lambda: damped_model(3), (0, 2, 3), "linear", True),
    "llama-shared": (lambda: damped_llama(1), (1, 2, 4), "shared", True),
}


@pytest.mark.parametrize("case", CASES)
def test_del_equals_greedy_on_random_models(case):
    build, layers, arch, moves = CASES[case]
    adapter = get_adapter(build())
    heads = HeadSet(adapter, HeadSpec(arch, layers))
    prompt_list = prompts(10, 5)
    settings = DecodeSettings(max_new_tokens=14)
    reference = decode_all(FullDecoding(), adapter, prompt_list, settings)
    emitted = torch.tensor([t for r in reference for t in r.ids])
    eos_settings = DecodeSettings(max_new_tokens=14, eos_token_id=int(emitted.bincount().argmax()))
    eos_reference = decode_all(FullDecoding(), adapter, prompt_list, eos_settings)
    assert any(len(r.ids) < 14 for r in eos_reference), "EOS should end some generations early"
    drafted = accepted = moved = 0
    for variant, kwargs in VARIANTS.items():
        mode = DELDecoding(heads, **kwargs)
        with_eos = variant in ("paper", "tpl")
        for refs, s in ((reference, settings), (eos_reference, eos_settings))[: 1 + with_eos]:
            for i, (got, ref) in enumerate(zip(decode_all(mode, adapter, prompt_list, s), refs, strict=True)):
                assert got.ids == ref.ids, f"del ({variant}) differs from greedy on prompt {i}"
                drafted += got.stats.drafted
                accepted += got.stats.accepted
                moved += len({k for k in got.stats.exit_histogram if k in layers}) > 1
    assert 0 < accepted < drafted, "both accepted and rejected drafts must occur"
    assert bool(moved) == moves, f"{moved} generations drafted at more than one exit layer"


@pytest.mark.parametrize("case", ["llama-linear", "neox-mlp"])
def test_del_matches_a_naive_recompute(case):
    """Against `model(ids)` recomputed at every step (no engine, no cache), float64."""
    model = damped_llama(0) if case == "llama-linear" else damped_model(2).double()
    adapter = get_adapter(model)
    heads = (
        HeadSet(adapter, HeadSpec("linear", (1, 3))) if case == "llama-linear" else mlp_heads(adapter, (1, 3))
    )
    prompt_list = prompts(8, 1)
    settings = DecodeSettings(max_new_tokens=10)
    for kwargs in ({}, {"draft_stop": "tpl", "context": 0}):
        got = decode_all(DELDecoding(heads, **kwargs), adapter, prompt_list, settings)
        for i, (prompt, g) in enumerate(zip(prompt_list, got, strict=True)):
            assert g.ids == naive_decode(model, heads, prompt, 10)[0], f"del differs on prompt {i} ({kwargs})"


def test_del_stops_at_the_context_limit_and_at_stop_strings():
    adapter = get_adapter(damped_model(5))
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    prompt_list = prompts(16, 5, max_len=6)
    settings = DecodeSettings(max_new_tokens=40)
    reference = decode_all(FullDecoding(), adapter, prompt_list, settings, max_len=16)
    assert all(len(p) + len(r.ids) == 16 for p, r in zip(prompt_list, reference, strict=True))
    for kwargs in ({}, {"draft_stop": "tpl"}):
        got = decode_all(DELDecoding(heads, **kwargs), adapter, prompt_list, settings, max_len=16)
        assert [g.ids for g in got] == [r.ids for r in reference], kwargs

    plain = DecodeSettings(max_new_tokens=16)
    unstopped = decode_all(FullDecoding(), adapter, prompt_list, plain)
    texts = [letters(r.ids) for r in unstopped]
    stop = Stop((texts[0][5:7], texts[1][6:8]), (texts[2][4] + "[a-m]",))
    stopped = DecodeSettings(max_new_tokens=16, stop=StopCheck(stop, letters))
    full = decode_all(FullDecoding(), adapter, prompt_list, stopped)
    assert sum(len(f.ids) < len(u.ids) for f, u in zip(full, unstopped, strict=True)) >= 3
    for f, u in zip(full, unstopped, strict=True):
        assert f.ids == cut_at_stop(u.ids, stop)
    got = decode_all(DELDecoding(heads), adapter, prompt_list, stopped)
    assert [g.ids for g in got] == [f.ids for f in full]


def test_del_verification_runs_only_the_layers_above_each_draft_exit():
    model = damped_model(3).double()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    mode = DELDecoding(heads)
    for prompt in prompts(4, 3):
        engine = ExitEngine(adapter, exit_layers=mode.exit_layers)
        calls = LayerCalls(engine)
        result = mode.generate(engine, prompt, DecodeSettings(max_new_tokens=16))
        want = expected_rows(calls.passes, adapter.num_layers, len(prompt))
        assert [seen for seen, _ in calls.passes] == want
        assert result.stats.layer_rows == sum(out.layer_rows for _, out in calls.passes[1:])
        assert engine.tap is None, "the engine's tap must be handed back"


# ------------------------------------------------------------------------------ adaptation


def passthrough_after(first: int, layers: int = 6):
    """A float64 GPT-NeoX whose layers after `first` add nothing to the residual stream, so the
    hidden state after any later layer is the final one."""
    model = tiny_gpt_neox(layers=layers, seed=4)
    with torch.no_grad():
        for layer in model.gpt_neox.layers[first + 1 :]:
            for linear in (layer.attention.dense, layer.mlp.dense_4h_to_h):
                linear.weight.zero_()
                if linear.bias is not None:
                    linear.bias.zero_()
    return model


def scripted_heads(adapter, good: tuple[int, ...], bad: tuple[int, ...]) -> HeadSet:
    """Linear heads at layers past the passthrough: `good` ones are the model's own unembedding,
    so they always agree with it; `bad` ones are it rolled by one token, so they never do."""
    heads = HeadSet(adapter, HeadSpec("linear", tuple(sorted(good + bad))))
    weight = adapter.unembed.weight.detach()
    with torch.no_grad():
        for k in good:
            heads.heads[str(k)].proj.weight.copy_(weight)
        for k in bad:
            heads.heads[str(k)].proj.weight.copy_(weight.roll(1, 0))
    return heads


@pytest.fixture(scope="module")
def passthrough():
    model = passthrough_after(0)
    return model, get_adapter(model)


@pytest.mark.parametrize("draft_stop", ["confidence", "tpl"])
def test_del_drafts_long_from_the_head_that_agrees(passthrough, draft_stop):
    model, adapter = passthrough
    settings = DecodeSettings(max_new_tokens=30)
    for good, bad in (((3,), (1,)), ((1,), (3,)), ((1, 3), ())):
        heads = scripted_heads(adapter, good, bad)
        for context in (32, 0):
            mode = DELDecoding(heads, draft_stop=draft_stop, context=context)
            for prompt in prompts(2, 4):
                full = FullDecoding().generate(ExitEngine(adapter), prompt, settings)
                got = mode.generate(ExitEngine(adapter, exit_layers=mode.exit_layers), prompt, settings)
                assert got.ids == full.ids
                rounds = mode.last_run.rounds
                if context == 0:  # nothing known: one draft at the shallowest head, then it knows
                    first = rounds.pop(0)
                    assert (first.exit_layer, first.budget) == (1, 1)
                    assert first.accepted == (1 if 1 in good else 0)
                # The shallowest agreeing head, the longest drafts: TPL grows with d when alpha = 1.
                assert {(r.exit_layer, r.budget) for r in rounds} == {(min(good), 18)}, (good, context)
                stats = mode.last_run.stats
                assert all(stats[k].alpha == 1.0 for k in good) and all(stats[k].alpha == 0.0 for k in bad)
                assert got.stats.accepted == got.stats.drafted - (context == 0 and 1 not in good)
                # Rounds of 18 drafts: a full-depth pass per 19 tokens.
                assert got.stats.exit_histogram[5] <= math.ceil(29 / 19) + (context == 0)


def test_del_does_not_draft_from_useless_heads(passthrough):
    model, adapter = passthrough
    heads = scripted_heads(adapter, (), (1, 3))
    settings = DecodeSettings(max_new_tokens=20)
    for context, probe in ((32, 0), (0, 1)):
        mode = DELDecoding(heads, context=context)
        for prompt in prompts(3, 6):
            full = FullDecoding().generate(ExitEngine(adapter), prompt, settings)
            got = mode.generate(ExitEngine(adapter, exit_layers=mode.exit_layers), prompt, settings)
            assert got.ids == full.ids
            # At most the blind first round's one draft; then every round is a plain full-depth step.
            assert got.stats.drafted == probe and got.stats.accepted == 0
            assert all(r.budget == 0 for r in mode.last_run.rounds[probe:])
            assert got.stats.forward_passes == 20 + probe  # the prefill, then one pass per token


def test_tpl_choice_by_hand():
    # alpha 0.5 at layer 0 of 6: TPL(d) = (1 + .5 + ... + .5^d) / (6 + d) = 1/6, 1.5/7, 1.75/8, 1.875/9.
    assert tpl_choice({0: 0.5}, 6, 18) == (0, 2)
    # A head costing 2 layers: 1/8, 1.5/11, 1.75/14: drafts get shorter.
    assert tpl_choice({0: 0.5}, 6, 18, head_cost=2.0) == (0, 1)
    assert tpl_choice({0: 0.5}, 6, 1) == (0, 1)  # capped by max_draft
    assert tpl_choice({1: 0.0, 3: 1.0}, 6, 18) == (3, 18)
    assert tpl_choice({1: 1.0, 3: 1.0}, 6, 18) == (1, 18)  # the cheaper of two perfect heads
    assert tpl_choice({1: 0.0, 3: 0.0}, 6, 18) == (1, 0)  # no drafting pays; ties go shallow
    # One draft at layer l pays exactly when alpha > (l + 1) / L.
    assert tpl_choice({2: 0.49}, 6, 1) == (2, 0) and tpl_choice({2: 0.51}, 6, 1) == (2, 1)
    assert tpl_choice({}, 6, 18) is None


def test_decay_lets_the_choice_follow_a_change_of_context():
    """Layer 1 agreed perfectly for 20 rounds, then stops agreeing; layer 3 stays at 0.8. With
    decay the choice moves to layer 3 within a few rounds; without, much later."""

    def rounds_to_switch(decay: float) -> int:
        shallow, deep = LayerStats(), LayerStats()
        for _ in range(20):
            shallow.update(decay, 4, 0, 0.0, 0.0)
            deep.update(decay, 4, 1, 0.0, 0.0)
        assert tpl_choice({1: shallow.alpha, 3: deep.alpha}, 6, 18)[0] == 1
        for n in range(1, 200):
            shallow.update(decay, 0, 4, 0.0, 0.0)
            deep.update(decay, 4, 1, 0.0, 0.0)
            if tpl_choice({1: shallow.alpha, 3: deep.alpha}, 6, 18)[0] == 3:
                return n
        return 200

    assert rounds_to_switch(0.5) <= 2 < 5 < rounds_to_switch(1.0)
    stats = LayerStats()
    stats.update(0.9, 2, 1, 1.6, 0.2)
    assert stats.threshold == pytest.approx((1.6 / 2 + 0.2 / 1) / 2)
    assert LayerStats(matched=3.0).threshold is None  # never mismatched: no confidence stop


def test_the_confidence_stop_ends_drafting_below_the_threshold():
    adapter = get_adapter(damped_model(1))
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    mode = DELDecoding(heads, max_draft=6)
    settings = DecodeSettings(max_new_tokens=30)
    stopped = 0
    for prompt in prompts(10, 2):
        result = mode.generate(ExitEngine(adapter, exit_layers=mode.exit_layers), prompt, settings)
        for r in mode.last_run.rounds:
            remaining = settings.max_new_tokens - (r.base - len(prompt) + 1)
            limit = min(r.budget, remaining)
            assert len(r.confidences) == r.drafted <= limit
            if r.threshold is None or r.drafted == 0:
                assert r.drafted == limit
                continue
            assert all(c >= r.threshold for c in r.confidences[:-1])
            if r.drafted < limit:
                assert r.confidences[-1] < r.threshold
                stopped += 1
        assert result.stats.drafted == sum(r.drafted for r in mode.last_run.rounds)
    assert stopped > 5, "the confidence stop should end some rounds early"


# ------------------------------------------------------------------------------ statistics


@torch.no_grad()
def brute_force_stats(model, heads, layers, prompt, ids, run, decay):
    """The decayed per-layer statistics recomputed from one `model(...)` over the final sequence:
    shadow tokens at the prompt's last positions, then at each observed round's positions up to
    its first rejected draft."""
    seq = torch.tensor([prompt.tolist() + ids])
    out = model(seq, output_hidden_states=True)
    final = out.logits[0].argmax(-1)  # the full model's greedy token after each position

    def counts(positions: list[int]) -> dict[int, list[float]]:
        result = {}
        for k in layers:
            logits = heads(k, out.hidden_states[k + 1][0, positions])
            best, tokens = torch.log_softmax(logits.float(), -1).max(-1)
            hit = tokens == final[positions]
            conf = best.exp()
            result[k] = [
                float(hit.sum()),
                float((~hit).sum()),
                float(conf[hit].sum()),
                float(conf[~hit].sum()),
            ]
        return result

    p = len(prompt)
    updates = [counts(list(range(p - run.context_rows, p)))] if run.context_rows else []
    updates += [
        counts(list(range(r.base, r.base + r.accepted + 1))) for r in run.rounds if r.accepted is not None
    ]
    totals = {k: [0.0] * 4 for k in layers}
    for update in updates:
        for k in layers:
            totals[k] = [decay * t + u for t, u in zip(totals[k], update[k], strict=True)]
    return totals


STATS_CASES = {  # name: (model, architecture, DEL settings)
    "neox-linear": (lambda: damped_model(6).double(), "linear", {"context": 5}),
    "llama-shared": (lambda: damped_llama(2), "shared", {"decay": 0.8}),
    "neox-linear-tpl": (lambda: damped_model(7).double(), "linear", {"draft_stop": "tpl", "decay": 1.0}),
}


@pytest.mark.parametrize("case", STATS_CASES)
def test_statistics_and_costs_are_consistent(case):
    build, arch, kwargs = STATS_CASES[case]
    model = build()
    adapter = get_adapter(model)
    layers = (1, 3)
    heads = HeadSet(adapter, HeadSpec(arch, layers))
    mode = DELDecoding(heads, **kwargs)
    last = adapter.num_layers - 1
    per_row = 2 * heads.cost_per_token()["macs"]
    for prompt in prompts(6, 8):
        engine = ExitEngine(adapter, exit_layers=mode.exit_layers)
        calls = LayerCalls(engine)
        head_flops = heads.flops
        result = mode.generate(engine, prompt, DecodeSettings(max_new_tokens=24))
        head_flops = heads.flops - head_flops
        stats, run = result.stats, mode.last_run

        # Rounds tile the generated positions: each starts right after the last one's accepted drafts.
        assert run.rounds[0].base == len(prompt)
        for a, b in zip(run.rounds, run.rounds[1:], strict=False):
            assert b.base == a.base + a.accepted + 1
        assert all(r.accepted is not None for r in run.rounds[:-1])
        assert run.context_rows == min(mode.context, len(prompt))

        # Counts against the rounds and the passes.
        assert stats.drafted == sum(r.drafted for r in run.rounds)
        assert stats.exit_histogram[last] == len(run.rounds)
        for k in layers:
            assert stats.exit_histogram[k] == sum(r.drafted for r in run.rounds if r.exit_layer == k)
        assert stats.verifications == sum(r.drafted > 0 for r in run.rounds)
        assert stats.forward_passes == 1 + sum(r.drafted + 1 for r in run.rounds)
        observed = sum(r.accepted for r in run.rounds[:-1])
        assert 0 <= stats.accepted - observed <= run.rounds[-1].drafted
        assert stats.full_model_drafts == 0 and stats.acceptance_rate_demo == stats.acceptance_rate

        # FLOPs: the passes' own, plus every head row: the drafts' and the shadow tokens'.
        kept = [(r.accepted + 1, r.drafted) for r in run.rounds[:-1]]
        shadow = len(layers) * run.context_rows + sum((len(layers) - 1) * n + max(0, n - d) for n, d in kept)
        assert run.shadow_rows == shadow
        assert stats.trace.extra_head_rows == shadow  # priced by the cost model as head calls
        assert head_flops == per_row * (stats.drafted + shadow)
        assert stats.flops == sum(out.flops for _, out in calls.passes[1:]) + head_flops
        if arch == "shared":  # one unembedding for every layer: one call per update
            assert run.shadow_calls == (run.context_rows > 0) + len(kept)
        else:  # one call per layer with rows; E's draft columns need none
            calls = len(layers) * (run.context_rows > 0) + sum(len(layers) - 1 + (n > d) for n, d in kept)
            assert run.shadow_calls == calls

        # The statistics DEL chose by, against a brute-force recompute.
        want = brute_force_stats(model, heads, layers, prompt, result.ids, run, mode.decay)
        for k in layers:
            got = run.stats[k]
            assert [got.matched, got.mismatched] == pytest.approx(want[k][:2], abs=1e-9), k
            if mode.draft_stop == "confidence":
                conf = [got.confidence_matched, got.confidence_mismatched]
                assert conf == pytest.approx(want[k][2:], rel=1e-5, abs=1e-9), k


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_draft": 0}, "del max_draft must be an integer >= 1, got 0"),
        ({"max_draft": 2.5}, "del max_draft must be an integer >= 1, got 2.5"),
        ({"decay": 1.5}, r"del decay must be in \[0, 1\] \(1: no decay\), got 1.5"),
        ({"decay": -0.1}, r"del decay must be in \[0, 1\]"),
        ({"draft_stop": "entropy"}, "del draft_stop must be one of confidence, tpl, got 'entropy'"),
        ({"context": -1}, "del context must be an integer >= 0"),
        ({"head_cost": -1.0}, "del head_cost must be a finite number >= 0"),
        ({"head_cost": float("nan")}, "del head_cost must be a finite number >= 0"),
        (
            {"layers": [2]},
            r"del candidate layers \[2\] must be a non-empty subset of the head layers \[1, 3\]",
        ),
        ({"layers": []}, "must be a non-empty subset of the head layers"),
    ],
)
def test_bad_del_settings_are_rejected(kwargs, message):
    heads = HeadSet(get_adapter(damped_model(9)), HeadSpec("shared", (1, 3)))
    with pytest.raises(ValueError, match=message):
        DELDecoding(heads, **kwargs)


def test_del_through_the_factory():
    adapter = get_adapter(damped_model(9))
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    mode = make_strategy("del", heads=heads, max_draft=6, decay=0.9, draft_stop="tpl", candidate_layers=[3])
    assert isinstance(mode, DELDecoding) and mode.exit_layers == [3] and mode.kv == "fill"
    assert (mode.max_draft, mode.decay, mode.draft_stop, mode.context) == (6, 0.9, "tpl", 32)
    with pytest.raises(ValueError, match="mode.max_draft must be an integer >= 1, got 0"):
        check_mode("del", max_draft=0)
    with pytest.raises(ValueError, match=r"mode.decay must be in \[0, 1\]"):
        check_mode("del", max_draft=18, decay=2.0)
    with pytest.raises(ValueError, match="mode.draft_stop must be one of confidence, tpl"):
        make_strategy("del", heads=heads, draft_stop="never")
    with pytest.raises(ValueError, match="engine.kv=skip is lossy and mode del accepts only"):
        check_mode("del", kv="skip")
    with pytest.raises(ValueError, match="mode del needs heads"):
        make_strategy("del")
    engine = ExitEngine(adapter, exit_layers=[1])  # no segment ends at head layer 3
    with pytest.raises(ValueError, match=r"do not end at exit layers \[3\]"):
        DELDecoding(heads).generate(engine, torch.tensor([1, 2]), DecodeSettings())
    assert engine.tap is None


# ------------------------------------------------------------------------------ graphs


@pytest.mark.parametrize("arch", ["shared", "linear"])
def test_del_gives_the_same_tokens_with_graphs(arch):
    """Segments, heads and decisions replayed as graphs (CPU stand-in): tokens and choices unchanged."""
    adapter = get_adapter(damped_model(1).double())
    heads = HeadSet(adapter, HeadSpec(arch, (1, 3)))
    prompt_list = prompts(8, 1)
    settings = DecodeSettings(max_new_tokens=16)
    full = decode_all(FullDecoding(), adapter, prompt_list, settings)
    for kwargs in ({}, {"draft_stop": "tpl"}):
        mode = DELDecoding(heads, max_draft=6, **kwargs)
        eager = decode_all(mode, adapter, prompt_list, settings)
        graphed = ExitEngine(adapter, exit_layers=mode.exit_layers, graphs=ReplayCapture, max_graph_rows=4)
        heads.graphs = GraphCache(ReplayCapture)
        try:
            got = [mode.generate(graphed, p, settings) for p in prompt_list]
        finally:
            heads.graphs, head_graphs = None, heads.graphs
        assert [g.ids for g in got] == [f.ids for f in full] == [e.ids for e in eager]
        assert [g.stats.exit_histogram for g in got] == [e.stats.exit_histogram for e in eager]
        assert head_graphs.replays > 0 and len(graphed.graphs) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_del_is_lossless_with_cuda_graphs_on_gpu():
    adapter = get_adapter(damped_model(3).cuda())
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    prompt_list = [p.cuda() for p in prompts(20, 3)]
    settings = DecodeSettings(max_new_tokens=24)
    reference, _ = measure_decoding(FullDecoding(), adapter, prompt_list, settings, repeats=1)
    for kwargs in ({}, {"draft_stop": "tpl"}):
        mode = DELDecoding(heads, **kwargs)
        eager, _ = measure_decoding(mode, adapter, prompt_list, settings, repeats=1)
        ids, stats = measure_decoding(mode, adapter, prompt_list, settings, repeats=1, graphs=CudaGraph)
        assert eager == reference and ids == reference, kwargs
        assert stats["graphs_captured"] > 0
