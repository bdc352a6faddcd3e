"""The embedded default model: a real LM whose calibrated heads let many tokens exit, decoded losslessly."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from earlyexit.data.streams import token_streams
from earlyexit.decoding import (
    DecodeSettings,
    DSSDDecoding,
    EarlyExitDecoding,
    FullDecoding,
    LayerSkipDecoding,
)
from earlyexit.exits.calibrate import calibrate
from earlyexit.exits.head_stats import collect_head_stats, exit_shares
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.loading import EMBEDDED_MODEL_DIR, load_model

HEAD_FILES = sorted((EMBEDDED_MODEL_DIR / "heads").glob("*.safetensors"))
pytestmark = pytest.mark.skipif(
    not (EMBEDDED_MODEL_DIR / "model.safetensors").exists() or not HEAD_FILES,
    reason="embedded model or its shipped heads missing (see docs/embedded-model.md: rebuilding it)",
)


@pytest.fixture(scope="module")
def embedded():
    model, tokenizer = load_model("embedded")
    adapter = get_adapter(model)
    heads = HeadSet.load(HEAD_FILES[0], adapter)
    _, calib, heldout = token_streams(tokenizer, "stdlib")
    return adapter, tokenizer, heads, calib, heldout


def test_embedded_model_is_a_real_language_model(embedded):
    adapter, _, _, calib, heldout = embedded
    windows = heldout[: 16 * 128].view(16, 128)
    with torch.no_grad():
        logits = adapter.model(windows).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    # Unigram fitted on the neighbouring calibration text: a baseline that knows the domain.
    counts = torch.bincount(calib, minlength=adapter.vocab_size).double() + 1
    unigram_nll = -(counts / counts.sum()).log()[windows[:, 1:].flatten()].mean().item()
    assert math.exp(nll) < 0.5 * math.exp(unigram_nll), (math.exp(nll), math.exp(unigram_nll))


def test_calibrated_heads_let_many_tokens_exit(embedded):
    adapter, _, heads, calib, heldout = embedded
    cal_stats = collect_head_stats(adapter, heads, calib, 128, 4096, metrics=("entropy",), progress=False)
    cal = calibrate(cal_stats.scores["entropy"], cal_stats.agree, "entropy", [0.6, 0.9])
    held = collect_head_stats(adapter, heads, heldout, 128, 4096, metrics=("entropy",), progress=False)
    loose = exit_shares(held, "entropy", cal.thresholds_for(0.6))
    assert 1 - loose["final"] > 0.3, loose  # a substantial share leaves before the last layer
    assert loose["agreement"] > 0.55
    strict = exit_shares(held, "entropy", cal.thresholds_for(0.9))
    assert strict["final"] > loose["final"] and strict["agreement"] > loose["agreement"]


NEW = 16  # new tokens per generation


@pytest.fixture(scope="module")
def held_prompts(embedded):
    """50 held-out prompts of 4-31 tokens, and an EOS the model really emits: the token greedy
    decoding emits most often on the first 10 of them (the tokenizer's own EOS never comes)."""
    adapter, _, _, _, heldout = embedded
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(heldout) - 32, (50,), generator=gen).tolist()
    lengths = torch.randint(4, 32, (50,), generator=gen).tolist()
    prompt_list = [heldout[s : s + n] for s, n in zip(starts, lengths, strict=True)]
    engine = ExitEngine(adapter)
    free = [FullDecoding().generate(engine, p, DecodeSettings(NEW)).ids for p in prompt_list[:10]]
    eos = Counter(t for ids in free for t in ids).most_common(1)[0][0]
    return prompt_list, eos, free


def stops_at(ids: list[int], eos: int) -> bool:
    """EOS, if emitted, is the last token; without it the budget is used up."""
    if eos in ids:
        return ids.index(eos) == len(ids) - 1
    return len(ids) == NEW


@pytest.fixture(scope="module")
def policies(embedded) -> dict[str, ThresholdPolicy]:
    """Entropy thresholds at target 0.6 and max-prob at 0.8, calibrated on 2048 tokens."""
    adapter, _, heads, calib, _ = embedded
    stats = collect_head_stats(adapter, heads, calib, 128, 2048, progress=False)
    return {
        m: ThresholdPolicy(heads, m, calibrate(stats.scores[m], stats.agree, m, [t]).thresholds_for(t))
        for m, t in (("entropy", 0.6), ("max-prob", 0.8))
    }


def test_every_mode_stops_at_an_emitted_eos_and_lossless_modes_equal_full(embedded, held_prompts, policies):
    adapter, _, heads, _, _ = embedded
    prompt_list, eos, free = held_prompts
    settings = DecodeSettings(max_new_tokens=NEW, eos_token_id=eos)
    reference = [FullDecoding().generate(ExitEngine(adapter), p, settings).ids for p in prompt_list]
    # EOS only stops decoding: the run without it, cut after its first EOS, is the same.
    assert reference[:10] == [ids[: ids.index(eos) + 1] if eos in ids else ids for ids in free]
    assert sum(r[-1] == eos for r in reference) >= 10, "EOS should end many generations"
    modes = [
        LayerSkipDecoding(heads, heads.layers[0], 4),
        LayerSkipDecoding(heads, heads.layers[-1], 2),
        DSSDDecoding(policies["entropy"], max_draft=5),
        DSSDDecoding(policies["max-prob"], max_draft=3),
        EarlyExitDecoding(policies["max-prob"]),
    ]
    for mode in modes:
        engine = ExitEngine(adapter, exit_layers=mode.exit_layers)
        runs = [mode.generate(engine, p, settings) for p in prompt_list]
        assert all(stops_at(r.ids, eos) for r in runs), mode.name
        assert sum(r.ids[-1] == eos for r in runs) >= 10, mode.name
        if mode.name == "early-exit":
            assert sum(r.stats.exit_histogram[k] for r in runs for k in heads.layers) > 0
            continue
        assert [r.ids for r in runs] == reference, mode.name
        drafted = sum(r.stats.drafted for r in runs)
        assert 0 < sum(r.stats.accepted for r in runs) < drafted


def test_full_decoding_equals_transformers_generate(embedded, held_prompts):
    adapter, _, _, _, _ = embedded
    prompt_list, eos, _ = held_prompts
    settings = DecodeSettings(max_new_tokens=NEW, eos_token_id=eos)
    ended = 0
    for prompt in prompt_list[:24]:
        ours = FullDecoding().generate(ExitEngine(adapter), prompt, settings).ids
        theirs = adapter.model.generate(
            prompt[None],
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        assert ours == theirs[0, len(prompt) :].tolist()
        ended += len(ours) < NEW
    assert ended > 0, "some generations should stop at EOS"


def final_rows(engine: ExitEngine) -> dict[int, torch.Tensor]:
    """Wraps `engine.forward`: the final logits of every position a pass carried to full depth
    (the latest pass wins, as a rolled-back position is computed again)."""
    rows: dict[int, torch.Tensor] = {}
    inner = engine.forward

    def forward(ids, exit_check=None):
        out = inner(ids, exit_check)
        if out.final_logits is not None:
            rows.update(zip(out.final_positions, out.final_logits.float(), strict=True))
        return out

    engine.forward = forward
    return rows


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def test_low_precision_lossless_means_equal_up_to_a_near_tie(held_prompts, policies):
    """bfloat16 on CPU: docs/engine.md's definition of lossless in half precision. A verification pass
    (several rows) and a decode step (one row) round differently, so for the same prefix their final
    logits may differ by a few units in the last place (ulp). A lossless mode must therefore equal
    `full` up to the first position where they differ, and there `full`'s logit margin between its
    token and the mode's must be within that rounding: a near-tie, whose margin is reported."""
    model, _ = load_model("embedded", dtype=torch.bfloat16)
    adapter = get_adapter(model)
    heads = HeadSet.load(HEAD_FILES[0], adapter)
    dssd = ThresholdPolicy(heads, "entropy", policies["entropy"].thresholds)
    # On the x86 CPUs measured, bfloat16 layerskip (E=1) meets a near-tie on prompts 3, 38 and 47
    # and dssd on prompt 15; prompts 0 and 1 meet none. The test does not require a near-tie.
    prompt_list = [held_prompts[0][i] for i in (0, 1, 3, 15, 38, 47)]
    settings = DecodeSettings(max_new_tokens=NEW)
    eps = torch.finfo(torch.bfloat16).eps

    def ulp(logits: torch.Tensor) -> float:
        return eps * 2.0 ** math.floor(math.log2(logits.abs().max().item()))

    full = []
    for prompt in prompt_list:
        engine = ExitEngine(adapter)
        rows = final_rows(engine)
        full.append((FullDecoding().generate(engine, prompt, settings).ids, rows))
    worst_ulps, margins = 0.0, []
    for mode in (LayerSkipDecoding(heads, 1, 4), DSSDDecoding(dssd, max_draft=5)):
        for prompt, (want, want_rows) in zip(prompt_list, full, strict=True):
            engine = ExitEngine(adapter, exit_layers=mode.exit_layers)
            rows = final_rows(engine)
            got = mode.generate(engine, prompt, settings).ids
            differ = first_difference(got, want)
            assert (differ is None) == (got == want)
            # Position len(prompt) + i - 1 predicts output token i; compare every position the
            # mode verified up to the first difference (after it, the prefixes are not the same).
            for i in range(len(want) if differ is None else differ + 1):
                f, v = want_rows[len(prompt) + i - 1], rows[len(prompt) + i - 1]
                assert int(v.argmax()) == got[i] and int(f.argmax()) == want[i]
                worst_ulps = max(worst_ulps, ((f - v).abs().max() / ulp(f)).item())
            if differ is not None:
                f = want_rows[len(prompt) + differ - 1]
                margins.append((f[want[differ]] - f[got[differ]]).item())
                assert margins[-1] <= 8 * ulp(f), (mode.name, margins[-1], ulp(f))
    assert worst_ulps <= 4, worst_ulps
    print(f"bfloat16: verification vs decode logits within {worst_ulps:g} ulp; near-tie margins {margins}")
    assert len(margins) <= len(prompt_list), "near-ties are rare: most runs must equal full exactly"
    # The check tells a lossy mode apart: early exit departs from full at clear margins.
    lossy = []
    for prompt, (want, want_rows) in zip(prompt_list[:4], full, strict=False):
        engine = ExitEngine(adapter, exit_layers=dssd.exit_layers)
        got = EarlyExitDecoding(dssd).generate(engine, prompt, settings).ids
        differ = first_difference(got, want)
        f = want_rows[len(prompt) + differ - 1]
        lossy.append((f[want[differ]] - f[got[differ]]).item() / ulp(f))
    assert max(lossy) > 8, lossy
