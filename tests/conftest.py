"""Shared fixtures: tiny random models built from configs, in float64 for exactness tests."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

# Overrides that make a real `run.py` run on the embedded model take seconds, every stage included.
TINY_RUN = [
    "task=none",
    "bench.prompts=2",
    "bench.max_new_tokens=8",
    "bench.repeats=1",
    "bench.warmup=0",
    "calibration.max_tokens=2048",
]


def tiny_gpt_neox(
    layers: int = 6,
    hidden: int = 32,
    vocab: int = 97,
    seed: int = 0,
    parallel: bool = True,
    attn: str = "sdpa",
):
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        max_position_embeddings=128,
        rotary_pct=0.25,
        use_parallel_residual=parallel,
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    return GPTNeoXForCausalLM(config).double().eval()


def tiny_llama(layers: int = 4, hidden: int = 32, vocab: int = 97, seed: int = 0, attn: str = "sdpa"):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).double().eval()


@pytest.fixture
def neox64():
    return tiny_gpt_neox()
