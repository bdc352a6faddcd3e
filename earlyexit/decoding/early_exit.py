"""`early-exit`: each token leaves at the first head whose confidence passes its threshold (lossy).

What happens to an exited token's deeper K/V is the `kv` strategy (earlyexit.model.engine):
`fill` (exact: the engine runs the skipped layers with the next pass), `propagate` (CALM: K/V
projected from the exit state) or `skip` (none; later tokens do not attend to it there).
"""

from __future__ import annotations

import torch

from earlyexit.decoding.base import DecodeResult, DecodeSettings, Run, greedy
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.engine import ExitEngine, check_kv_strategy


class EarlyExitDecoding:
    name = "early-exit"

    def __init__(self, policy: ThresholdPolicy, kv: str = "fill") -> None:
        check_kv_strategy(kv)
        self.policy, self.kv = policy, kv

    @property
    def exit_layers(self) -> list[int]:
        return self.policy.exit_layers

    @property
    def heads(self) -> HeadSet:
        return self.policy.heads

    def generate(self, engine: ExitEngine, prompt: torch.Tensor, settings: DecodeSettings) -> DecodeResult:
        run = Run(engine, prompt, settings, self.exit_layers, self.heads, self.kv)
        run.prefill()
        while not run.done:
            out = run.forward(torch.tensor([run.ids[-1]]), self.policy)
            run.emit([greedy(out.logits)])
        return run.finish()
