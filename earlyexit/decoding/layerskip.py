"""`layerskip`: self-speculation with a fixed exit layer E and a fixed draft length K.

As in LayerSkip (Elhoushi et al., arXiv 2404.16710): drafts go through layers <= E and
that layer's head; one pass runs only layers > E for them, reusing their K/V and exit
hidden states. transformers' own `assistant_early_exit` cannot do this on GPT-NeoX
(DESIGN.md), hence this implementation. Works with the `shared` head or any trained head.
"""

from __future__ import annotations

import torch

from earlyexit.decoding.base import DecodeResult, DecodeSettings
from earlyexit.decoding.speculative import speculative_generate
from earlyexit.exits.heads import HeadSet
from earlyexit.model.engine import ExitEngine


class LayerSkipDecoding:
    name = "layerskip"
    kv = "fill"  # lossless: verification needs the drafts' exact deeper K/V

    def __init__(self, heads: HeadSet, exit_layer: int, draft_length: int) -> None:
        if exit_layer not in heads.layers:
            raise ValueError(f"layerskip exit layer {exit_layer} has no head; head layers: {heads.layers}")
        if draft_length < 1:
            raise ValueError(f"layerskip draft length must be >= 1, got {draft_length}")
        self.heads, self.exit_layer, self.draft_length = heads, exit_layer, draft_length

    @property
    def exit_layers(self) -> list[int]:
        return [self.exit_layer]

    def _always_exit(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        return self.heads(layer, hidden) if layer == self.exit_layer else None

    def generate(self, engine: ExitEngine, prompt: torch.Tensor, settings: DecodeSettings) -> DecodeResult:
        return speculative_generate(
            engine, prompt, settings, self._always_exit, self.draft_length, self.exit_layers, self.heads
        )
