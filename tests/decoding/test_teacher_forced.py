"""Teacher-forced exits through the engine, against a brute-force recompute under each KV rule.

Under fill the token-by-token run must equal the batched teacher-forced logits (one forward plus
the heads); under propagate and skip it must equal `naive_teacher_forced`, which shares no
engine code, and differ from fill: there a position's state depends on earlier exits.
"""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, naive_teacher_forced

from earlyexit.decoding.teacher_forced import teacher_forced_exits
from earlyexit.model.engine import ExitEngine
from earlyexit.tasks.lm_eval_model import early_exit_logits


def sequences(n: int = 6, length: int = 12, seed: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (length,), generator=gen) for _ in range(n)]


@pytest.mark.parametrize("rule", ["propagate", "skip", "fill"])
def test_equals_the_brute_force_recompute_under_its_rule(rule_case, rule):
    model, adapter, _, policy = rule_case
    engine = ExitEngine(adapter, exit_layers=policy.exit_layers, kv=rule)
    full_depth, exited, off_fill = adapter.num_layers - 1, 0, 0.0
    for i, ids in enumerate(sequences()):
        score_from = (0, 1, 5)[i % 3]  # nothing prefilled, one token, a prompt
        got = teacher_forced_exits(engine, policy, ids, score_from)
        want, exits = naive_teacher_forced(model, policy, ids, score_from, rule)
        assert got.score_from == score_from and got.exit_layers == exits, (rule, i)
        torch.testing.assert_close(got.logits, want, rtol=0, atol=1e-9)
        exited += sum(e != full_depth for e in exits)
        fill, _ = naive_teacher_forced(model, policy, ids, score_from, "fill")
        off_fill = max(off_fill, float((want - fill).abs().max()))
    assert exited >= 12, "heads must fire often for the rule to matter"
    assert (off_fill > 1e-6) == (rule != "fill"), off_fill


def test_fill_equals_the_batched_teacher_forced_logits(rule_case):
    """Where positions do not depend on earlier exits, one pass per token and one forward agree."""
    _, adapter, _, policy = rule_case
    engine = ExitEngine(adapter, exit_layers=policy.exit_layers)
    batch = torch.stack(sequences())
    logits, exits = early_exit_logits(adapter, policy.heads, policy, batch)
    for row, ids in enumerate(batch):
        got = teacher_forced_exits(engine, policy, ids, 0)
        torch.testing.assert_close(got.logits, logits[row], rtol=0, atol=1e-9)
        assert got.exit_layers == exits[row].tolist()
    assert len(set(exits.flatten().tolist())) > 1  # exits and full passes both happen


def test_no_policy_is_the_full_model(rule_case):
    _, adapter, _, policy = rule_case
    ids = sequences(1)[0]
    got = teacher_forced_exits(ExitEngine(adapter, kv="skip"), None, ids, 4)
    torch.testing.assert_close(got.logits, adapter.model(ids[None]).logits[0, 4:], rtol=0, atol=1e-9)
    assert got.exit_layers == [adapter.num_layers - 1] * 8


def test_clear_errors(rule_case):
    _, adapter, _, policy = rule_case
    ids = sequences(1)[0]
    with pytest.raises(ValueError, match="score_from=12 leaves no position to score in 12 tokens"):
        teacher_forced_exits(ExitEngine(adapter, exit_layers=policy.exit_layers), policy, ids, 12)
    with pytest.raises(ValueError, match=r"do not end at exit layers \[1, 3\]"):
        teacher_forced_exits(ExitEngine(adapter), policy, ids, 0)
