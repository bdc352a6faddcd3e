"""Where two greedy decodings of the same prompts part, and how close `full`'s call was there.

Why: a lossless method (self-speculation, a draft model, prompt lookup) must emit `full`'s tokens.
In float32/64 any difference is a bug; in half precision the verification pass (several rows) and
`full`'s decode step (one row) round differently, so the two may part at a near-tie. The logit
margin (top-1 minus top-2 of `full`'s logits) where they part tells the two cases apart: a margin
of a few units in the last place is a near-tie, a large one is a bug. It is reported, not hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class Divergence:
    """The first prompt (in order) whose outputs differ, the position in its output, and how many differ."""

    prompt: int
    position: int
    prompts_differing: int


def first_divergence(full: Sequence[Sequence[int]], other: Sequence[Sequence[int]]) -> Divergence | None:
    """None when every output is equal; else where the first differing output parts from `full`'s.

    An output that is a strict prefix of the other parts where the shorter one ends.
    """
    if len(full) != len(other):
        raise ValueError(f"{len(full)} outputs against {len(other)}: the same prompts are needed")
    differing = [i for i, (a, b) in enumerate(zip(full, other, strict=True)) if list(a) != list(b)]
    if not differing:
        return None
    a, b = full[differing[0]], other[differing[0]]
    position = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return Divergence(differing[0], position, len(differing))


@torch.no_grad()
def logit_margin(
    model: PreTrainedModel, prompt: Sequence[int], output: Sequence[int], position: int
) -> float:
    """Top-1 minus top-2 of the model's logits for output token ``position`` (given the prompt and
    the output before it), in the model's own dtype: the margin `full`'s greedy choice had there."""
    ids = torch.tensor([[*prompt, *output[:position]]], device=model.device)
    logits = model(ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])
