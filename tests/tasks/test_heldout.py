"""Held-out exit share and agreement under a KV strategy, token by token through the engine.

Under fill they must equal the fast statistics (`exit_shares` on one forward per batch of the
same windows), which proves the token-by-token runner; under propagate and skip, on a model
whose heads fire often, they must differ: there a token's state depends on earlier exits.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, damped_model, quantile_thresholds

from earlyexit.exits.head_stats import collect_head_stats, exit_shares
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.tasks.heldout import heldout_agreement

SEQ_LEN, MAX_TOKENS = 32, 256  # eight windows


@pytest.fixture(scope="module")
def damped():
    # Damped less than the decoding tests' models: deeper heads fire too, so a frozen state
    # changes counts, not only logits (layer-1 exits are the same under every rule).
    model = damped_model(2, damp=0.3).double()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    thresholds = quantile_thresholds(adapter, heads, "entropy", 0.5)
    stream = torch.randint(0, VOCAB, (400,), generator=torch.Generator().manual_seed(21))
    return adapter, ThresholdPolicy(heads, "entropy", thresholds), stream


def test_fill_equals_the_fast_statistics(damped):
    adapter, policy, stream = damped
    got = heldout_agreement(adapter, policy, "fill", stream, SEQ_LEN, MAX_TOKENS, progress=False)
    stats = collect_head_stats(
        adapter, policy.heads, stream, SEQ_LEN, MAX_TOKENS, ("entropy",), progress=False
    )
    want = exit_shares(stats, "entropy", policy.thresholds)
    assert got.tokens == stats.n_tokens == MAX_TOKENS
    assert got.shares() == pytest.approx(want, abs=1e-12)
    assert got.early_exit_share == pytest.approx(1 - want["final"], abs=1e-12)
    # Agreement among exited tokens, from exit_shares's: non-exited tokens agree under fill.
    exited_agreement = (want["agreement"] - want["final"]) / (1 - want["final"])
    assert got.exited_agreement == pytest.approx(exited_agreement, abs=1e-12)
    assert 0.2 < got.early_exit_share < 1 and got.exited_agreement < 1  # exits, and some disagree
    assert got.seconds > 0 and got.as_dict()["kv"] == "fill"


@pytest.mark.parametrize("rule", ["propagate", "skip"])
def test_propagate_and_skip_give_their_own_numbers(damped, rule):
    adapter, policy, stream = damped
    fill = heldout_agreement(adapter, policy, "fill", stream, SEQ_LEN, MAX_TOKENS, progress=False)
    got = heldout_agreement(adapter, policy, rule, stream, SEQ_LEN, MAX_TOKENS, progress=False)
    assert got.tokens == fill.tokens and sum(got.exit_histogram.values()) == got.tokens
    assert got.agreeing != fill.agreeing, rule
    # Full-depth tokens see earlier tokens' frozen states, so they too can disagree with the
    # full model: overall agreement is counted, not implied by the exited tokens' agreement.
    full_depth = got.exit_histogram[adapter.num_layers - 1]
    assert got.agreeing <= got.exited_agreeing + full_depth
    assert 0 <= got.agreement <= 1 and math.isfinite(got.exited_agreement)


def test_a_stream_shorter_than_a_window_is_refused(damped):
    adapter, policy, stream = damped
    with pytest.raises(ValueError, match="held-out text has 400 tokens, fewer than one window"):
        heldout_agreement(adapter, policy, "skip", stream, 500, progress=False)
