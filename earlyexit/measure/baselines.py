"""Reference baselines from transformers itself: greedy `generate`, and its LayerSkip.

`generate(assistant_early_exit=E)` is transformers' LayerSkip. It truncates
`config.num_hidden_layers`, which GPT-NeoX's layer loop ignores, so on Pythia it raises
(DESIGN.md). It is attempted, never emulated: where it fails, the failure and its reason
are what gets recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from earlyexit.decoding import DecodeResult, DecodeSettings, DecodeStats
from earlyexit.model.device import synchronize
from earlyexit.model.engine import ExitEngine


@dataclass
class BaselineResult:
    name: str
    status: str  # "ok" or "unsupported"
    ids: list[int]
    reason: str = ""


def _generate(model: PreTrainedModel, prompt: torch.Tensor, max_new_tokens: int, **kwargs) -> list[int]:
    ids = prompt.reshape(1, -1).to(model.device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,  # fixed length, like the engine's timing runs
        do_sample=False,
        pad_token_id=model.config.eos_token_id or 0,
        **kwargs,
    )
    return out[0, ids.shape[1] :].tolist()


def hf_generate(model: PreTrainedModel, prompt: torch.Tensor, max_new_tokens: int) -> BaselineResult:
    """transformers' own greedy decoding with its KV cache: the speed reference."""
    return BaselineResult("hf-generate", "ok", _generate(model, prompt, max_new_tokens))


class _FirstToken(BaseStreamer):
    """Notes when `generate` hands out its first new token (the prompt is put first)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.puts, self.first = device, 0, None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            synchronize(self.device)
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class HFGenerate:
    """transformers' greedy `generate` behind the decoding-strategy interface, so the timing
    protocol can interleave it with the engine's modes (time to first token via a streamer)."""

    name = "hf-generate"
    exit_layers: list[int] = []
    heads = None

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    def generate(self, engine: ExitEngine, prompt: torch.Tensor, settings: DecodeSettings) -> DecodeResult:
        device = self.model.device
        streamer = _FirstToken(device)
        synchronize(device)
        start = time.perf_counter()
        ids = _generate(self.model, prompt, settings.max_new_tokens, streamer=streamer)
        synchronize(device)
        stats = DecodeStats(tokens=len(ids), total_s=time.perf_counter() - start)
        stats.ttft_s = (streamer.first or start) - start
        return DecodeResult(ids, stats)


def hf_layerskip(
    model: PreTrainedModel, prompt: torch.Tensor, max_new_tokens: int, exit_layer: int
) -> BaselineResult:
    """transformers' LayerSkip (`assistant_early_exit`), or why it cannot run on this model."""
    try:
        ids = _generate(model, prompt, max_new_tokens, assistant_early_exit=exit_layer)
    except (IndexError, ValueError, RuntimeError, TypeError, AttributeError) as err:
        reason = f"{type(err).__name__}: {err} (model_type={model.config.model_type})"
        return BaselineResult("hf-layerskip", "unsupported", [], reason)
    return BaselineResult("hf-layerskip", "ok", ids)
