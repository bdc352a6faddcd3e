"""transformers baselines: generate is the greedy reference; its LayerSkip fails on GPT-NeoX, honestly."""

from __future__ import annotations

import torch
from conftest import tiny_gpt_neox, tiny_llama

from earlyexit.decoding import DecodeSettings, FullDecoding
from earlyexit.measure.baselines import hf_generate, hf_layerskip
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine

PROMPT = torch.tensor([5, 0, 17, 42])  # includes the pad id 0: it must not be masked


def test_hf_generate_matches_full_decoding():
    model = tiny_gpt_neox(seed=4).float()
    ours = FullDecoding().generate(ExitEngine(get_adapter(model)), PROMPT, DecodeSettings(max_new_tokens=8))
    assert hf_generate(model, PROMPT, 8).ids == ours.ids


def test_hf_layerskip_is_recorded_as_unsupported_on_gpt_neox():
    result = hf_layerskip(tiny_gpt_neox().float(), PROMPT, 6, exit_layer=2)
    assert result.status == "unsupported" and not result.ids
    assert "IndexError" in result.reason and "gpt_neox" in result.reason


def test_hf_layerskip_runs_and_is_lossless_on_llama():
    model = tiny_llama().float()
    result = hf_layerskip(model, PROMPT, 6, exit_layer=1)
    assert result.status == "ok"
    assert result.ids == hf_generate(model, PROMPT, 6).ids
