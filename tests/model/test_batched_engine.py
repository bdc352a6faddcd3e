"""The batched engine: each sequence exactly as alone, exited rows never computed, a trace to price.

Float64 tiny models. References: transformers' own forward per sequence (no exits, or exits whose
pending tokens are filled later), and `ExitEngine` per sequence fed the same tokens and the same
exit decisions under each KV rule (itself checked against brute force in
tests/decoding/test_kv_strategies.py).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt_neox, tiny_llama

from earlyexit.model.adapter import get_adapter
from earlyexit.model.batched_engine import BatchedExitEngine, BatchPassTrace, BatchSegmentRun
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import ReplayCapture
from earlyexit.model.trace import TraceCounts

TOL = {"sdpa": 1e-9, "eager": 1e-6}  # eager attention takes its softmax in float32
FAMILIES = {"neox": tiny_gpt_neox, "llama": tiny_llama}
EXIT_LAYERS = [1, 2]


def sequences(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=gen) for n in lengths]


def scripted(seq: int, step: int):
    """A deterministic exit script: some tokens exit at layer 1, some at 2, the rest go on."""
    choice = (3 * seq + 5 * step) % 4

    def check(layer, hidden):
        return hidden.new_zeros(97) if layer == EXIT_LAYERS[choice % 2] and choice < 2 else None

    return check


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_full_depth_rows_equal_transformers_with_exits_and_finishes(family, attn):
    """Prompts of different lengths, per-sequence exits (their pending tokens filled later), and
    sequences leaving the batch at different steps: every full-depth row equals the reference."""
    model = FAMILIES[family](attn=attn)
    ids = sequences([14, 9, 20])
    reference = [model(s[None]).logits[0] for s in ids]
    engine = BatchedExitEngine(get_adapter(model), EXIT_LAYERS, batch_size=3, max_len=32)
    prompt = [4, 6, 3]
    step = engine.start([s[:n] for s, n in zip(ids, prompt, strict=True)])
    worst, flushed = 0.0, 0
    for i, n in enumerate(prompt):
        worst = max(worst, (step[i].final_logits - reference[i][:n]).abs().max().item())
    fed, t = {0: 4, 1: 6, 2: 3}, 0
    while fed:
        last = {s for s, n in fed.items() if n == len(ids[s]) - 1}  # fed at full depth, then released
        checks = {s: scripted(s, t) for s in fed if s not in last}
        step = engine.forward({s: ids[s][n : n + 1] for s, n in fed.items()}, checks)
        for s in fed:
            out = step[s]
            if out.final_logits is not None:
                flushed += len(out.final_positions) - 1
                rows = reference[s][out.final_positions]
                worst = max(worst, (out.final_logits - rows).abs().max().item())
            fed[s] += 1
        for s in last:
            assert not engine.pending(s)
            engine.release(s)
            del fed[s]
        t += 1
    assert worst <= TOL[attn], worst
    assert flushed > 5, "pending tokens must have been carried deeper"


def decode_alone_and_batched(adapter, kv, ids, prompt, steps, rollback=None):
    """Feed the same tokens and exit script to one ExitEngine per sequence and to a batched engine;
    yield (sequence, alone's output, batched output) for every pass of every sequence."""
    alone = [ExitEngine(adapter, EXIT_LAYERS, max_len=32, kv=kv) for _ in ids]
    batched = BatchedExitEngine(adapter, EXIT_LAYERS, batch_size=len(ids), max_len=32, kv=kv)
    step = batched.start([s[:n] for s, n in zip(ids, prompt, strict=True)])
    for s, engine in enumerate(alone):
        yield s, engine.forward(ids[s][: prompt[s]]), step[s]
    fed = list(prompt)
    for t in range(steps):
        if rollback is not None and t == rollback:  # drop each sequence's last two tokens
            for s, engine in enumerate(alone):
                fed[s] -= 2
                engine.truncate(fed[s])
                batched.truncate(s, fed[s])
        live = [s for s in range(len(ids)) if (s + t) % 5 != 4]  # a sequence sits out now and then
        step = batched.forward(
            {s: ids[s][fed[s] : fed[s] + 1] for s in live}, {s: scripted(s, t) for s in live}
        )
        for s in live:
            yield s, alone[s].forward(ids[s][fed[s] : fed[s] + 1], scripted(s, t)), step[s]
            fed[s] += 1


@pytest.mark.parametrize("kv", ["fill", "propagate", "skip"])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_sequence_decodes_as_exit_engine_does_alone_under_every_kv_rule(family, kv):
    adapter = get_adapter(FAMILIES[family]())
    ids = sequences([30, 30, 30], seed=1)
    passes = list(decode_alone_and_batched(adapter, kv, ids, [5, 2, 8], 14, 6 if kv == "fill" else None))
    exits = 0
    for s, alone, batched in passes:
        assert batched.exit_layer == alone.exit_layer, s
        if alone.final_logits is None:
            assert batched.final_logits is None
            exits += 1
            continue
        assert batched.final_positions == alone.final_positions, s
        torch.testing.assert_close(batched.final_logits, alone.final_logits, rtol=0, atol=1e-9)
    assert exits >= 10


def test_rows_that_exit_leave_the_pass_and_the_trace_counts_what_ran():
    adapter = get_adapter(tiny_gpt_neox(layers=6))
    engine = BatchedExitEngine(adapter, [1, 3], batch_size=4, max_len=32)
    seen = {}
    for index, layer in enumerate(adapter.layers):
        layer.register_forward_hook(
            lambda m, args, out, i=index: seen.setdefault(i, []).append(args[0].shape[:2])
        )
    engine.start(sequences([5, 3, 7, 2]))
    seen.clear()
    exit_at_1 = lambda layer, h: h.new_zeros(97) if layer == 1 else None  # noqa: E731
    never = lambda layer, h: None  # noqa: E731
    checks = {0: exit_at_1, 1: never, 2: exit_at_1}  # sequence 3 has no check: full depth
    step = engine.forward({s: torch.tensor([s]) for s in range(4)}, checks)
    assert [step[s].exit_layer for s in range(4)] == [1, 5, 1, 5]
    assert seen[0] == seen[1] == [(4, 1)]  # all four sequences, one row each
    assert all(seen[i] == [(2, 1)] for i in range(2, 6))  # the two that exited left the pass
    trace = step.trace
    assert isinstance(trace, BatchPassTrace) and trace.sequences == 4 and not trace.exited
    assert [(s.start, s.end, s.rows, s.kv_len, s.sequences) for s in trace.segments] == [
        (0, 1, 4, 8, 4),  # prefill lengths 5, 3, 7, 2: the widest row sits at position 7
        (2, 3, 2, 4, 2),
        (4, 5, 2, 4, 2),
    ]
    assert sorted(trace.checks) == [(1, False), (1, True), (1, True), (3, False)]  # one per row checked
    assert trace.unembed_rows == 2
    # Next pass: sequences 0 and 2 carry their pending token through layers 2-5; the other two
    # are padded to two rows there, and the padding is counted with the pending rows.
    seen.clear()
    step = engine.forward({s: torch.tensor([s]) for s in range(4)})
    assert seen[0] == [(4, 1)] and seen[2] == [(4, 2)]
    deep = step.trace.segments[1]
    assert isinstance(deep, BatchSegmentRun)
    assert (deep.new_rows, deep.pending_rows, deep.padding_rows) == (4, 4, 2)
    assert step[0].final_positions == [5, 6] and step[1].final_positions == [4]
    counts = TraceCounts()
    counts.add(step.trace)
    assert counts.layer_rows == 2 * 4 + 4 * 8


def test_flops_price_each_row_like_exit_engine():
    """Equal prompts: a batched full pass costs B times one sequence's; unequal ones attend over the
    padded width, and the trace says so."""
    adapter = get_adapter(tiny_llama())
    alone = ExitEngine(adapter, [1], max_len=32)
    alone.forward(torch.arange(6))
    one = alone.forward(torch.tensor([6]))
    engine = BatchedExitEngine(adapter, [1], batch_size=3, max_len=32)
    engine.start([torch.arange(6)] * 3)
    step = engine.forward({s: torch.tensor([6]) for s in range(3)})
    assert step.flops == 3 * one.flops > 0
    engine.start([torch.arange(6), torch.arange(2), torch.arange(4)])
    step = engine.forward({s: torch.tensor([6]) for s in range(3)})
    assert {s.kv_len for s in step.trace.segments} == {7}
    assert step.flops == 3 * one.flops


def test_sequences_sharing_a_rows_check_are_decided_in_one_call():
    adapter = get_adapter(tiny_gpt_neox())
    engine = BatchedExitEngine(adapter, [1, 3], batch_size=3, max_len=16)
    engine.start(sequences([3, 4, 5]))
    calls = []

    class Shared:
        def __call__(self, layer, hidden):
            calls.append(("one", layer, tuple(hidden.shape)))
            return None

        def rows(self, layer, hidden):
            calls.append(("rows", layer, tuple(hidden.shape)))
            return [hidden.new_zeros(97) if layer == 3 else None, None, None][: len(hidden)]

    shared, alone = Shared(), Shared()
    step = engine.forward({s: torch.tensor([1]) for s in range(3)}, {0: shared, 1: shared, 2: alone})
    assert calls == [("rows", 1, (2, 32)), ("one", 1, (32,)), ("rows", 3, (2, 32)), ("one", 3, (32,))]
    assert [step[s].exit_layer for s in range(3)] == [3, 5, 5]
    # The trace says so, for the cost model: at each layer one call of 2 rows and one of 1 row.
    assert step.trace.head_calls == [2, 1, 2, 1] and len(step.trace.checks) == 6


def test_a_finished_sequence_leaves_and_the_rest_stay_in_the_first_slots():
    adapter = get_adapter(tiny_gpt_neox())
    ids = sequences([12, 12, 12], seed=3)
    reference = [tiny_gpt_neox()(s[None]).logits[0] for s in ids]
    engine = BatchedExitEngine(adapter, [], batch_size=3, max_len=16)
    engine.start([s[:4] for s in ids])
    engine.release(0)
    assert engine.sequences == [1, 2]
    step = engine.forward({s: ids[s][4:5] for s in (1, 2)})
    assert engine.cache.read == slice(0, 2)  # read in place, no copy
    for s in (1, 2):
        torch.testing.assert_close(step[s].logits, reference[s][4], rtol=0, atol=1e-9)


def test_bad_inputs_are_refused_naming_the_sizes():
    adapter = get_adapter(tiny_gpt_neox())
    with pytest.raises(
        ValueError, match="CUDA graphs cannot decode a batch: every captured graph has batch-1"
    ):
        BatchedExitEngine(adapter, [1], batch_size=2, graphs=ReplayCapture)
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        BatchedExitEngine(adapter, [5])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchedExitEngine(adapter, batch_size=0)
    engine = BatchedExitEngine(adapter, [1], batch_size=2, max_len=8)
    with pytest.raises(
        ValueError, match="a batch of 3 sequences does not fit the KV cache of 2 sequences x 8"
    ):
        engine.start(sequences([2, 2, 2]))
    with pytest.raises(ValueError, match="empty batch"):
        engine.start([])
    with pytest.raises(ValueError, match="sequence 1 of 9 tokens exceeds the context of 8"):
        engine.start(sequences([3, 9]))
    engine.start(sequences([3, 4]))
    with pytest.raises(ValueError, match="exits are decided per token"):
        engine.forward({0: torch.tensor([1, 2])}, {0: lambda layer, h: None})
    with pytest.raises(ValueError, match=r"sequence 7 is not in the batch \(live: \[0, 1\]\)"):
        engine.forward({7: torch.tensor([1])})
    with pytest.raises(ValueError, match="a pass needs at least one sequence"):
        engine.forward({})
    with pytest.raises(ValueError, match="cannot truncate sequence 0 of 3 tokens to 5"):
        engine.truncate(0, 5)
    skip = BatchedExitEngine(adapter, [1], batch_size=2, max_len=8, kv="skip")
    skip.start(sequences([3, 4]))
    with pytest.raises(ValueError, match="kv=skip cannot roll back"):
        skip.truncate(0, 2)
    model = tiny_gpt_neox(seed=1)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'.*'sdpa'"):
        BatchedExitEngine(get_adapter(model), [1])
