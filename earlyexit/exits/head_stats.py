"""Per-head confidence scores and agreement with the final layer, over a token stream.

Calibration, the separation report and the exit-share report all need the same table:
for every token and head, each metric's score and whether the head's argmax equals the
final layer's. Computing it from one teacher-forced full forward is exact for exits too,
because the engine's KV fill makes hidden states independent of where earlier tokens exited.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from earlyexit.data.streams import contiguous_windows
from earlyexit.exits.confidence import METRICS, get_metric, should_exit
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.train import backbone_targets, check_stream
from earlyexit.model.adapter import ModelAdapter


@dataclass
class HeadStats:
    layers: list[int]
    scores: dict[str, dict[int, torch.Tensor]]  # metric -> layer -> [N] float32
    agree: dict[int, torch.Tensor]  # layer -> [N] bool
    n_tokens: int

    def agreement(self) -> dict[int, float]:
        """Per head, the share of tokens whose head argmax equals the final argmax."""
        return {k: self.agree[k].double().mean().item() for k in self.layers}


@torch.no_grad()
def collect_head_stats(
    adapter: ModelAdapter,
    heads: HeadSet,
    stream: torch.Tensor,
    seq_len: int,
    max_tokens: int = 16384,
    metrics: tuple[str, ...] = tuple(METRICS),
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "head statistics",
) -> HeadStats:
    """Score every head on up to `max_tokens` tokens of `stream` (non-overlapping windows)."""
    check_stream(stream, seq_len, "calibration")
    fns = {m: get_metric(m) for m in metrics}
    scores: dict[str, dict[int, list]] = {m: {k: [] for k in heads.layers} for m in metrics}
    agree: dict[int, list] = {k: [] for k in heads.layers}
    windows = contiguous_windows(stream, seq_len, max_tokens)
    for batch in tqdm(windows.split(batch_size), desc=desc, disable=not progress):
        hidden, final = backbone_targets(adapter, heads, batch)
        top = final.argmax(-1).flatten().cpu()
        for k in heads.layers:
            logits = heads(k, hidden[k]).flatten(0, -2)
            agree[k].append(logits.argmax(-1).cpu() == top)
            for m, fn in fns.items():
                scores[m][k].append(fn(logits).cpu())
    return HeadStats(
        layers=heads.layers,
        scores={m: {k: torch.cat(v) for k, v in by.items()} for m, by in scores.items()},
        agree={k: torch.cat(v) for k, v in agree.items()},
        n_tokens=windows.numel(),
    )


def exit_shares(stats: HeadStats, metric: str, thresholds: dict[int, float]) -> dict[str, float]:
    """Share of tokens leaving at each head (first head, in depth order, whose score passes),
    the share reaching the last layer, and the agreement of the emitted tokens with it."""
    left = torch.ones(stats.n_tokens, dtype=torch.bool)
    correct = torch.zeros(stats.n_tokens, dtype=torch.bool)
    shares: dict[str, float] = {}
    for k in sorted(thresholds):
        fired = left & should_exit(stats.scores[metric][k], thresholds[k])
        shares[f"layer_{k}"] = fired.double().mean().item()
        correct |= fired & stats.agree[k]
        left &= ~fired
    shares["final"] = left.double().mean().item()
    shares["agreement"] = (correct | left).double().mean().item()
    return shares
