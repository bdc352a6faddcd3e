"""Self-speculative draft-and-verify over the exit engine (greedy, lossless).

Drafting feeds one token at a time with an exit policy; each exit yields a draft and
leaves its token pending in the engine. The first pass that reaches full depth carries
every pending draft through the remaining layers, reusing their K/V below the exit and
their exit hidden states, and so *is* the verification: its final logits check each
draft. A pass reaches full depth either because no head fired (DSSD: that token comes
from the full model) or because the draft budget is spent (the last draft is then fed
without exits). Greedy prefix match; the first mismatch is replaced by the full model's
token; a bonus token comes when all drafts match; rejected positions are rolled back.
A `RoundPlanner` (DEL) may choose each round's policy and budget and end drafting early;
LayerSkip and DSSD run without one, unchanged.

Acceptance, two ways (DESIGN.md, "The public DSSD demo, read closely"): `drafted`/`accepted`
count head drafts only. The public DSSD demo also appends the token of a pass where no head
fired to its drafts, and that token is accepted when the prefix match reaches it (every head
draft before it accepted). `full_model_drafts`/`full_model_drafts_accepted` count those passes:
full depth while drafting was still allowed, not because the draft budget was spent or a draft
was EOS. LayerSkip's policy always exits at E, so it never has one and both rates coincide.

Precision: every emitted token is the argmax of final logits, so in float32 and float64 the
output equals `full`'s. In float16/bfloat16 the verification pass (several rows) and `full`'s
decode step (one row) round differently, by a few units in the last place, so the two agree up
to the first near-tie (a position where `full`'s top two logits are that close) and may part
there; that is what "lossless" means in half precision (docs/engine.md, "Lossless in half precision").
"""

from __future__ import annotations

from typing import Protocol

import torch

from earlyexit.decoding.base import DecodeResult, DecodeSettings, DecodeStats, Run, greedy
from earlyexit.exits.heads import HeadSet
from earlyexit.model.engine import ExitCheck, ExitEngine, StepOutput


class RoundPlanner(Protocol):
    """Chooses each round's drafting and learns from its verification (DEL, decoding/dynamic_exit.py).

    Without one (LayerSkip, DSSD) every round uses the same policy and draft budget.
    """

    def prefilled(self, out: StepOutput) -> None:
        """The prefill's pass (its final logits for every prompt row)."""

    def plan(self) -> tuple[ExitCheck, int]:
        """This round's draft policy and its draft budget (0: no drafts, one full-depth step)."""

    def stop_drafting(self) -> bool:
        """Asked after each draft: end drafting now, so the next pass verifies."""

    def observe(self, base: int, drafts: list[int], targets: list[int], accepted: int) -> None:
        """What the round's verification found: drafts at positions base+1.., the full model's
        greedy token after each position base.. (`targets`), and how many drafts it accepted."""


def count_acceptance(stats: DecodeStats, drafts: list[int], targets: list[int], may_draft: bool) -> int:
    """How many drafts the verification accepts (the longest prefix equal to the targets), counted
    into ``stats``; ``may_draft``: no head fired, so the demo counts the full-model token as a draft."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == targets[accepted]:
        accepted += 1
    stats.drafted += len(drafts)
    stats.accepted += accepted
    stats.verifications += bool(drafts)
    if may_draft:
        stats.full_model_drafts += 1
        stats.full_model_drafts_accepted += accepted == len(drafts)
    return accepted


def speculative_generate(
    engine: ExitEngine,
    prompt: torch.Tensor,
    settings: DecodeSettings,
    draft_policy: ExitCheck | None,
    max_draft: int,
    exit_layers: list[int],
    heads: HeadSet,
    planner: RoundPlanner | None = None,
) -> DecodeResult:
    """Greedy draft-and-verify; with `planner`, its `plan()` replaces `draft_policy` and `max_draft`."""
    run = Run(engine, prompt, settings, exit_layers, heads)
    out = run.prefill()
    if planner is not None:  # the prefill's final logits seed the planner's statistics
        planner.prefilled(out)
    while not run.done:
        if planner is not None:
            draft_policy, max_draft = planner.plan()
        base = engine.length  # position of the last emitted token, not yet in the cache
        limit = min(max_draft, run.remaining)
        token = run.ids[-1]
        drafts: list[int] = []
        while True:
            may_draft = len(drafts) < limit and token != settings.eos_token_id
            out = run.forward(torch.tensor([token]), draft_policy if may_draft else None)
            if out.final_logits is not None:
                break  # full depth: this pass verified every pending draft
            token = greedy(out.logits)
            drafts.append(token)
            if planner is not None and planner.stop_drafting():
                limit = len(drafts)
        # Row i of the final logits sits at position base + i and predicts the next token.
        assert out.final_positions[0] == base and len(out.final_positions) == len(drafts) + 1
        targets = out.final_logits.argmax(-1).tolist()
        accepted = count_acceptance(run.stats, drafts, targets, may_draft)
        engine.truncate(base + accepted + 1)  # keep the verified tokens' K/V, drop the rest
        run.emit([*drafts[:accepted], targets[accepted]])
        if planner is not None and not run.done:  # a last round's statistics would go unused
            planner.observe(base, drafts, targets, accepted)
    return run.finish()
