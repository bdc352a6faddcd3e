"""`dssd`: dynamic self-speculative decoding (Valade, arXiv 2407.21082 v2).

Each draft token runs through the heads in depth order and stops at the first confident
one; drafting stops when no head fires (that token then comes from the full model, in
the same pass that verifies the drafts) or at `max_draft` drafts.
"""

from __future__ import annotations

import torch

from earlyexit.decoding.base import DecodeResult, DecodeSettings
from earlyexit.decoding.speculative import speculative_generate
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.engine import ExitEngine


class DSSDDecoding:
    name = "dssd"
    kv = "fill"  # lossless: verification needs the drafts' exact deeper K/V

    def __init__(self, policy: ThresholdPolicy, max_draft: int = 5) -> None:
        if max_draft < 1:
            raise ValueError(f"dssd max_draft must be >= 1, got {max_draft}")
        self.policy, self.max_draft = policy, max_draft

    @property
    def exit_layers(self) -> list[int]:
        return self.policy.exit_layers

    @property
    def heads(self) -> HeadSet:
        return self.policy.heads

    def generate(self, engine: ExitEngine, prompt: torch.Tensor, settings: DecodeSettings) -> DecodeResult:
        return speculative_generate(
            engine, prompt, settings, self.policy, self.max_draft, self.exit_layers, self.heads
        )
