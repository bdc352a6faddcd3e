"""The pass trace counts exactly what each engine pass computed (checked pass by pass by hand)."""

from __future__ import annotations

import json
from collections import Counter

from conftest import damped_model, prompts, quantile_thresholds

from earlyexit.decoding import DecodeSettings, DSSDDecoding, EarlyExitDecoding, LayerSkipDecoding
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.trace import UNKNOWN_RUN, TraceCounts


class Recording(ExitEngine):
    """An engine that keeps every decode pass's output, with the pending count before it."""

    def forward(self, input_ids, exit_check=None):
        pending_before = len(self.pending)
        out = super().forward(input_ids, exit_check)
        self.log.append((pending_before, input_ids.numel(), exit_check is not None, out))
        return out


def _setup(seed: int = 1):
    adapter = get_adapter(damped_model(seed))
    heads = HeadSet(adapter, HeadSpec("shared", (1, 3)))
    policy = ThresholdPolicy(heads, "entropy", quantile_thresholds(adapter, heads, "entropy", 0.4))
    return adapter, heads, policy


def _check_pass(pending_before, new, checked, out, adapter, exit_layers):
    t = out.trace
    last = adapter.num_layers - 1
    # Segments run contiguously from layer 0 to the exit (or the last layer).
    assert t.segments[0].start == 0
    assert all(a.end + 1 == b.start for a, b in zip(t.segments, t.segments[1:], strict=False))
    assert t.segments[-1].end == out.exit_layer
    assert all(s.new_rows == new for s in t.segments)
    # Every pending token joins by the end of the pass that reaches its next layer.
    assert sum(s.layers * s.rows for s in t.segments) == out.layer_rows
    if out.exit_layer == last:
        assert t.unembed_rows == t.segments[-1].rows == len(out.final_positions)
        assert t.segments[-1].pending_rows == pending_before
        assert not any(fired for _, fired in t.checks)
    else:
        assert t.unembed_rows == 0 and t.checks[-1] == (out.exit_layer, True)
        assert not any(fired for _, fired in t.checks[:-1])
    if checked:
        assert [layer for layer, _ in t.checks] == [
            k for k in exit_layers if k <= out.exit_layer and k < last
        ]
    else:
        assert t.checks == []
    for s in t.segments:  # attends over every key up to the newest row's position
        assert s.kv_len == out.final_positions[-1] + 1 if out.final_positions else s.kv_len > 0
    assert t.depth == out.exit_layer + 1  # the layers whose weights the pass streamed


def test_every_pass_of_every_mode_is_traced_as_computed():
    adapter, heads, policy = _setup()
    modes = [EarlyExitDecoding(policy), DSSDDecoding(policy, max_draft=3), LayerSkipDecoding(heads, 1, 3)]
    for mode in modes:
        for prompt in prompts(8, 5):
            engine = Recording(adapter, exit_layers=mode.exit_layers)
            engine.log = []
            result = mode.generate(engine, prompt, DecodeSettings(max_new_tokens=10))
            decode = engine.log[1:]  # the first pass is the prefill
            for entry in decode:
                _check_pass(*entry, adapter, mode.exit_layers)
            stats = result.stats
            assert stats.trace.passes == len(decode) == stats.forward_passes - 1
            assert stats.trace.layer_rows == stats.layer_rows
            exits = sum(1 for *_, out in decode if out.exit_layer < adapter.num_layers - 1)
            assert stats.trace.heads_fired == exits
            assert sum(stats.trace.unembed.values()) == len(decode) - exits
            # Each pass knows the depth of the one before it (the prefill's is full); a segment
            # counts as warm the layers that pass ran too, under that pass's depth.
            passes = [out.trace for *_, out in engine.log]
            assert passes[0].depth == adapter.num_layers
            assert [t.previous_depth for t in passes[1:]] == [t.depth for t in passes[:-1]]
            # ... and how many passes in a row before it stopped short of full depth.
            shallow = [t.depth < adapter.num_layers for t in passes]
            for i, t in enumerate(passes):
                run = next((k for k in range(i) if not shallow[i - 1 - k]), i)
                assert t.previous_run == run
            expected, recorded = Counter(), Counter()
            for t in passes[1:]:
                for seg in t.segments:
                    warm = len(set(range(seg.start, seg.end + 1)) & set(range(t.previous_depth)))
                    expected[(t.previous_depth, warm, t.previous_run) if warm else (0, 0, 0)] += 1
            for key, n in stats.trace.segments.items():
                recorded[key[5:]] += n
            assert recorded == expected
            assert any(
                reuse < adapter.num_layers and run > 1 for reuse, warm, run in recorded if warm
            )  # shallow after shallow passes


def test_layerskip_verification_runs_only_the_layers_above_the_exit():
    adapter, heads, _ = _setup(2)
    mode = LayerSkipDecoding(heads, 1, 3)
    engine = Recording(adapter, exit_layers=mode.exit_layers)
    engine.log = []
    mode.generate(engine, prompts(1, 3, max_len=6)[0], DecodeSettings(max_new_tokens=9))
    verifying = [(pending, out) for pending, *_, out in engine.log[1:] if out.final_logits is not None]
    assert any(pending == 3 for pending, _ in verifying)
    for pending, out in verifying:
        below, above = out.trace.segments
        assert (below.start, below.end, below.rows) == (0, 1, 1)  # only the newest token below E
        assert (above.start, above.end) == (2, adapter.num_layers - 1)
        assert above.pending_rows == pending and above.rows == pending + 1  # drafts + the token fed


def test_trace_counts_round_trip_through_json():
    adapter, heads, policy = _setup()
    engine = ExitEngine(adapter, exit_layers=policy.exit_layers)
    stats = (
        DSSDDecoding(policy, 4).generate(engine, prompts(1, 7)[0], DecodeSettings(max_new_tokens=12)).stats
    )
    data = json.loads(json.dumps(stats.trace.to_json()))
    again = TraceCounts.from_json(data)
    assert again == stats.trace
    assert again.layer_rows == stats.layer_rows
    # Records stored before warm layers were recorded read 0, 0, 0: priced as after a full pass.
    old = {**data, "segments": [[*row[:5], row[-1]] for row in data["segments"]]}
    older = TraceCounts.from_json(old)
    assert {key[5:] for key in older.segments} == {(0, 0, 0)}
    assert older.layer_rows == stats.layer_rows
    # Those stored before shallow runs were recorded: a warm segment's run is unknown.
    old = {**data, "segments": [[*row[:7], row[-1]] for row in data["segments"]]}
    keys = TraceCounts.from_json(old).segments
    assert {key[7] for key in keys if key[6]} == {UNKNOWN_RUN}
    assert {key[7] for key in keys if not key[6]} <= {0}
