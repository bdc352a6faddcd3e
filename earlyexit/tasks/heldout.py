"""Held-out exit share and agreement with the full model, under a KV strategy, token by token.

`exits.head_stats` gets these from one forward per batch of windows, which is exact under
``kv="fill"`` only: under ``propagate`` and ``skip`` a token's hidden states depend on where
earlier tokens exited. Here each window runs through the engine one token at a time, as
decoding would run it, and every emitted argmax is compared with what the exact model (one
plain forward of the window) predicts at that position. Under ``fill`` the numbers equal
`exit_shares`'s on the same windows (up to rounding: in half precision a score at a near tie
may fall the other way); the price is one engine pass per token.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from earlyexit.data.streams import contiguous_windows
from earlyexit.decoding import EarlyExitDecoding, engine_for
from earlyexit.decoding.teacher_forced import teacher_forced_exits
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.exits.train import check_stream
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.device import synchronize


@dataclass
class HeldoutAgreement:
    """Counts over the scored tokens; the shares are derived so they never disagree with them."""

    kv: str
    exit_layers: list[int]  # the policy's, in depth order
    full_depth: int  # num_layers - 1: the exit layer of a token that did not exit
    tokens: int = 0
    exit_histogram: Counter = field(default_factory=Counter)  # exit layer -> tokens
    exited_agreeing: int = 0  # exited tokens whose emitted argmax is the full model's
    agreeing: int = 0  # all scored tokens whose emitted argmax is the full model's
    seconds: float = 0.0  # wall time of the whole evaluation (engine passes and full forwards)

    @property
    def exited(self) -> int:
        return self.tokens - self.exit_histogram[self.full_depth]

    @property
    def early_exit_share(self) -> float:
        return self.exited / self.tokens if self.tokens else math.nan

    @property
    def exited_agreement(self) -> float:
        """Among tokens that exited, the share whose emitted token is the full model's."""
        return self.exited_agreeing / self.exited if self.exited else math.nan

    @property
    def agreement(self) -> float:
        """Over all scored tokens: under propagate/skip a full-depth token can disagree too."""
        return self.agreeing / self.tokens if self.tokens else math.nan

    def shares(self) -> dict[str, float]:
        """`exit_shares`'s keys (``layer_k``, ``final``, ``agreement``) for the policy's exit layers."""
        out = {f"layer_{k}": self.exit_histogram[k] / self.tokens for k in self.exit_layers}
        out["final"] = self.exit_histogram[self.full_depth] / self.tokens
        out["agreement"] = self.agreement
        return out

    def as_dict(self) -> dict:
        return {
            "kv": self.kv,
            "tokens": self.tokens,
            "early_exit_share": self.early_exit_share,
            "exited_agreement": self.exited_agreement,
            "agreement": self.agreement,
            "exit_histogram": dict(sorted(self.exit_histogram.items())),
            "seconds": self.seconds,
        }


@torch.no_grad()
def heldout_agreement(
    adapter: ModelAdapter,
    policy: ThresholdPolicy,
    kv: str,
    stream: torch.Tensor,
    seq_len: int,
    max_tokens: int = 16384,
    progress: bool = True,
    desc: str = "held-out agreement",
) -> HeldoutAgreement:
    """Run `policy` under `kv` over the same windows as `collect_head_stats(stream, seq_len,
    max_tokens)`, every position of a window fed alone with exits (nothing prefilled), and
    count exits and agreement with the full model's argmax."""
    check_stream(stream, seq_len, "held-out")
    windows = contiguous_windows(stream, seq_len, max_tokens)
    engine = engine_for(EarlyExitDecoding(policy, kv), adapter, max_len=seq_len)
    result = HeldoutAgreement(kv, policy.exit_layers, adapter.num_layers - 1)
    synchronize(adapter.device)
    start = time.perf_counter()
    with tqdm(total=windows.numel(), desc=desc, unit="tok", disable=not progress) as bar:
        for window in windows:
            _score_window(adapter, engine, policy, window, result)
            bar.update(window.numel())
    synchronize(adapter.device)
    result.seconds = time.perf_counter() - start
    return result


def _score_window(adapter, engine, policy, window: torch.Tensor, result: HeldoutAgreement) -> None:
    """Add one window's exits and agreement to `result`."""
    full = adapter.model(window[None].to(adapter.device)).logits[0].argmax(-1)
    scored = teacher_forced_exits(engine, policy, window, 0)
    agree = (scored.logits.argmax(-1) == full).cpu()
    exited = torch.tensor(scored.exit_layers) != result.full_depth
    result.tokens += window.numel()
    result.exit_histogram.update(scored.exit_layers)
    result.exited_agreeing += int((agree & exited).sum())
    result.agreeing += int(agree.sum())
