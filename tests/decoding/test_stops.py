"""Stop strings and patterns end every mode where the user's output ends, checked as tokens are
emitted: a stop inside a run of accepted drafts truncates there, lossless modes still equal
`full` token for token (stop included), and lm-eval's generate_until generates nothing past it."""

from __future__ import annotations

import pytest
import torch
from conftest import damped_model, prompts
from test_decoding import decode_all, speculative_modes

from earlyexit.decoding import DecodeSettings, EarlyExitDecoding, FullDecoding, Stop, StopCheck
from earlyexit.decoding import base as decoding_base
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter


def letters(ids) -> str:
    """A stand-in tokenizer: each of the 97 token ids is one of 26 letters."""
    return "".join(chr(97 + int(t) % 26) for t in ids)


def cut_at_stop(ids: list[int], stop: Stop) -> list[int]:
    """The shortest prefix whose text holds a stop (all of ``ids`` when none does)."""
    for k in range(1, len(ids) + 1):
        if stop.find(letters(ids[:k])) is not None:
            return ids[:k]
    return ids


def test_stop_finds_strings_and_patterns_and_cuts_before_them():
    stop = Stop(("\n\n", "Q:"), (r"\n\S",))
    assert stop.find("abc") is None and stop.cut("abc") == "abc"
    assert stop.cut("answer\n\nQ: next") == "answer"
    assert stop.cut("def f():\n    x = 1\nclass A") == "def f():\n    x = 1"
    assert stop.cut("  x\n    y\n") == "  x\n    y\n"  # indented lines and a trailing newline go on
    assert not Stop(("",)) and Stop(("",)).strings == ()
    with pytest.raises(ValueError, match=r"stop pattern '\(' is not a regular expression"):
        Stop(patterns=("(",))


def test_the_tail_check_sees_what_a_check_of_the_whole_output_sees():
    gen = torch.Generator().manual_seed(0)
    stop = Stop(("abc", "zz"), (r"q[a-e]{3}",))
    check = StopCheck(stop, letters)
    for _ in range(200):
        ids = torch.randint(0, 97, (60,), generator=gen).tolist()
        first = next((k for k in range(1, 61) if stop.find(letters(ids[:k])) is not None), None)
        hits = [check.hit(ids[:k]) for k in range(1, 61)]
        assert hits.index(True) + 1 == first if first else not any(hits)


@pytest.fixture(scope="module")
def model_and_heads():
    adapter = get_adapter(damped_model(3))
    return adapter, HeadSet(adapter, HeadSpec("linear", (1, 3)))


def test_every_mode_stops_where_its_output_first_holds_a_stop(model_and_heads, monkeypatch):
    adapter, heads = model_and_heads
    prompt_list = prompts(40, 3)
    plain = DecodeSettings(max_new_tokens=16)
    reference = decode_all(FullDecoding(), adapter, prompt_list, plain)
    # Stops that greedy outputs really contain, midway: a bigram and a pattern.
    texts = [letters(r.ids) for r in reference]
    stop = Stop((texts[0][5:7], texts[1][6:8]), (texts[2][4] + "[a-m]",))
    check = StopCheck(stop, letters)
    stopped = DecodeSettings(max_new_tokens=16, stop=check)
    full = decode_all(FullDecoding(), adapter, prompt_list, stopped)
    for r, s in zip(reference, full, strict=True):
        assert s.ids == cut_at_stop(r.ids, stop)
    assert sum(len(s.ids) < len(r.ids) for r, s in zip(reference, full, strict=True)) >= 10

    cut_inside = []
    real_emit = decoding_base.Run.emit

    def emit(run, tokens):
        before = len(run.ids)
        real_emit(run, tokens)
        if run.stopped and len(run.ids) - before < len(tokens):
            cut_inside.append(len(tokens) - (len(run.ids) - before))

    monkeypatch.setattr(decoding_base.Run, "emit", emit)
    for mode in speculative_modes(heads, adapter, draft_lengths=(3,), metrics=("entropy", "max-prob")):
        got = decode_all(mode, adapter, prompt_list, stopped)
        for i, (g, f) in enumerate(zip(got, full, strict=True)):
            assert g.ids == f.ids, f"{mode.name} differs from full with stops on prompt {i}"
    assert cut_inside, "some stop must fall inside a run of accepted drafts"
    # A lossy mode stops where its own output first holds a stop.
    policy = ThresholdPolicy(heads, "entropy", {1: 1.0, 3: 2.0})
    early = EarlyExitDecoding(policy)
    unstopped = decode_all(early, adapter, prompt_list, plain)
    for u, s in zip(unstopped, decode_all(early, adapter, prompt_list, stopped), strict=True):
        assert s.ids == cut_at_stop(u.ids, stop)
