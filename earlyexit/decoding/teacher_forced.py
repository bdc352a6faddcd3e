"""Teacher-forced exits through the engine, one token at a time, exactly as decoding feeds them.

Under ``kv="fill"`` a position's hidden states do not depend on where earlier tokens exited, so
one batched forward plus the heads scores a sequence. Under ``propagate`` and ``skip`` they do:
an exited token's deeper state is frozen (and, under skip, hidden from later tokens), so a fed
sequence must go through the engine token by token, as the generated tokens go in decoding.
Here the tokens are given (teacher forcing) instead of generated; everything else is decoding's
loop: the first ``score_from`` tokens are one full-depth prefill, each later token one pass with
the exit policy, and the logits a fed token yields predict the token after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.engine import ExitEngine


@dataclass
class TeacherForcedExits:
    """What each fed position emitted: row i is position ``score_from + i``."""

    logits: torch.Tensor  # [n, V]: the exit head's logits where it exited, else the final logits
    exit_layers: list[int]  # per row; num_layers - 1 = full depth
    score_from: int  # position of row 0


@torch.no_grad()
def teacher_forced_exits(
    engine: ExitEngine,
    policy: ThresholdPolicy | None,
    ids: torch.Tensor,
    score_from: int,
) -> TeacherForcedExits:
    """Run `ids` through `engine` (reset first): `ids[:score_from]` in one full-depth prefill, then
    each later token alone with `policy` as the exit check (None: never exit).

    Returns, for positions ``score_from..len(ids)-1``, the logits each emitted (which predict the
    next token) and its exit layer. ``score_from=0`` prefills nothing: every token may exit.
    """
    ids = torch.as_tensor(ids).reshape(-1)
    _check(engine, policy, ids, score_from)
    engine.reset()
    if score_from:
        engine.forward(ids[:score_from])
    logits, exits = [], []
    for position in range(score_from, ids.numel()):
        out = engine.forward(ids[position : position + 1], policy)
        logits.append(out.logits)
        exits.append(out.exit_layer)
    return TeacherForcedExits(_stack(logits), exits, score_from)


def _check(engine: ExitEngine, policy: ThresholdPolicy | None, ids: torch.Tensor, score_from: int) -> None:
    """Clear errors before any pass runs."""
    if not 0 <= score_from < ids.numel():
        raise ValueError(f"score_from={score_from} leaves no position to score in {ids.numel()} tokens")
    missing = sorted(set(policy.exit_layers if policy else ()) - set(engine.exit_layers))
    if missing:
        raise ValueError(
            f"the engine's segments do not end at exit layers {missing} (engine exit layers: "
            f"{engine.exit_layers}); build it with the policy's exit layers"
        )


def _stack(logits: list[torch.Tensor]) -> torch.Tensor:
    """One [n, V] tensor; a head may emit in another dtype than the model (float32 heads, half model)."""
    dtype = logits[0].dtype
    for row in logits[1:]:
        dtype = torch.promote_types(dtype, row.dtype)
    return torch.stack([row.to(dtype) for row in logits])
