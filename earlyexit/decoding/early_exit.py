"""`early-exit`: each token leaves at the first head whose confidence passes its threshold (lossy).

Deeper K/V of exited tokens are filled by the engine when the next deeper pass runs.
"""

from __future__ import annotations

import torch

from earlyexit.decoding.base import DecodeResult, DecodeSettings, Run, greedy
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.engine import ExitEngine


class EarlyExitDecoding:
    name = "early-exit"

    def __init__(self, policy: ThresholdPolicy) -> None:
        self.policy = policy

    @property
    def exit_layers(self) -> list[int]:
        return self.policy.exit_layers

    @property
    def heads(self) -> HeadSet:
        return self.policy.heads

    def generate(self, engine: ExitEngine, prompt: torch.Tensor, settings: DecodeSettings) -> DecodeResult:
        run = Run(engine, prompt, settings, self.exit_layers, self.heads)
        run.prefill()
        while not run.done:
            out = run.forward(torch.tensor([run.ids[-1]]), self.policy)
            run.emit([greedy(out.logits)])
        return run.finish()
