"""`full`: greedy autoregressive decoding over all layers with a KV cache; the reference."""

from __future__ import annotations

import torch

from earlyexit.decoding.base import DecodeResult, DecodeSettings, Run, greedy
from earlyexit.model.engine import ExitEngine


class FullDecoding:
    name = "full"
    kv = "fill"  # never exits: every strategy would do the same; the exact one is the reference

    heads = None

    @property
    def exit_layers(self) -> list[int]:
        return []

    def generate(self, engine: ExitEngine, prompt: torch.Tensor, settings: DecodeSettings) -> DecodeResult:
        run = Run(engine, prompt, settings, self.exit_layers)
        run.prefill()
        while not run.done:
            out = run.forward(torch.tensor([run.ids[-1]]))
            run.emit([greedy(out.logits)])
        return run.finish()
