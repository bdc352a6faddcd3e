"""The embedded default model: a real LM whose calibrated heads let many tokens exit, decoded losslessly."""

from __future__ import annotations

import math

import pytest
import torch

from earlyexit.data.streams import token_streams
from earlyexit.decoding import DecodeSettings, DSSDDecoding, FullDecoding, LayerSkipDecoding
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
    reason="embedded model or its shipped heads missing (see README: reproducing the embedded model)",
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


def test_speculative_decoding_is_lossless_on_the_embedded_model(embedded):
    adapter, tokenizer, heads, calib, heldout = embedded
    stats = collect_head_stats(adapter, heads, calib, 128, 2048, progress=False)
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(heldout) - 32, (50,), generator=gen).tolist()
    lengths = torch.randint(4, 32, (50,), generator=gen).tolist()
    prompts = [heldout[s : s + n] for s, n in zip(starts, lengths, strict=True)]
    settings = DecodeSettings(max_new_tokens=16, eos_token_id=tokenizer.eos_token_id)
    policies = {
        m: ThresholdPolicy(heads, m, calibrate(stats.scores[m], stats.agree, m, [t]).thresholds_for(t))
        for m, t in (("entropy", 0.6), ("max-prob", 0.8))
    }
    modes = [
        LayerSkipDecoding(heads, heads.layers[0], 4),
        LayerSkipDecoding(heads, heads.layers[-1], 2),
        DSSDDecoding(policies["entropy"], max_draft=5),
        DSSDDecoding(policies["max-prob"], max_draft=3),
    ]
    reference = [FullDecoding().generate(ExitEngine(adapter), p, settings).ids for p in prompts]
    for mode in modes:
        engine = ExitEngine(adapter, exit_layers=mode.exit_layers)
        runs = [mode.generate(engine, p, settings) for p in prompts]
        assert [r.ids for r in runs] == reference, mode.name
        drafted = sum(r.stats.drafted for r in runs)
        assert 0 < sum(r.stats.accepted for r in runs) <= drafted
