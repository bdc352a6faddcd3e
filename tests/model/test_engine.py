"""The layer loop with exits must be exact: same logits as transformers, with or without exits."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt_neox, tiny_llama

from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine

TOL = 1e-9


@pytest.mark.parametrize("static_kv_len", [False, True])
@pytest.mark.parametrize("parallel", [True, False])
def test_no_exits_matches_transformers_forward(static_kv_len, parallel):
    model = tiny_gpt_neox(parallel=parallel)
    ids = torch.randint(0, 97, (20,), generator=torch.Generator().manual_seed(1))
    reference = model(ids[None]).logits[0]
    engine = ExitEngine(get_adapter(model), exit_layers=[1, 3], static_kv_len=static_kv_len)
    # Prefill part of the sequence, then decode the rest one token at a time.
    out = engine.forward(ids[:7])
    assert torch.allclose(out.final_logits, reference[:7], atol=TOL, rtol=0)
    for t in range(7, 20):
        out = engine.forward(ids[t : t + 1])
        assert out.exit_layer == 5
        assert (out.logits - reference[t]).abs().max().item() <= TOL


def test_llama_adapter_matches_transformers_forward():
    model = tiny_llama()
    ids = torch.randint(0, 97, (12,), generator=torch.Generator().manual_seed(2))
    reference = model(ids[None]).logits[0]
    engine = ExitEngine(get_adapter(model), exit_layers=[1])
    engine.forward(ids[:5])
    for t in range(5, 12):
        out = engine.forward(ids[t : t + 1])
        assert (out.logits - reference[t]).abs().max().item() <= TOL


@pytest.mark.parametrize("seed", range(6))
def test_mixed_exits_then_full_depth_matches_fresh_forward(seed):
    """(b) After tokens exit at assorted depths, a full-depth token sees exact K/V."""
    model = tiny_gpt_neox(layers=8, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (30,), generator=gen)
    exit_layers = [1, 3, 4, 6]
    engine = ExitEngine(get_adapter(model), exit_layers=exit_layers)
    engine.forward(ids[:4])
    reference = model(ids[None]).logits[0]
    # Random mixture of early exits (at any head) and full-depth tokens; the last one exits.
    choices = [*exit_layers, None]
    for t in range(4, 29):
        pick = torch.randint(0, len(choices) - (t == 28), (1,), generator=gen).item()
        target = choices[pick]
        out = engine.forward(
            ids[t : t + 1], lambda layer, h, target=target: h.new_zeros(1) if layer == target else None
        )
        assert out.exit_layer == (target if target is not None else 7)
        if target is None:
            assert (out.logits - reference[t]).abs().max().item() <= TOL
    assert engine.pending
    final = engine.forward(ids[29:30])
    assert (final.logits - reference[29]).abs().max().item() <= TOL
    # The pass also flushed every pending token: their final logits are exact too.
    for row, position in enumerate(final.final_positions):
        assert (final.final_logits[row] - reference[position]).abs().max().item() <= TOL
    assert not engine.pending


def test_truncate_discards_rejected_tokens():
    model = tiny_gpt_neox(seed=3)
    ids = torch.randint(0, 97, (16,), generator=torch.Generator().manual_seed(3))
    other = torch.randint(0, 97, (4,), generator=torch.Generator().manual_seed(4))
    engine = ExitEngine(get_adapter(model), exit_layers=[2])
    engine.forward(ids[:10])
    for tok in other:  # speculative tokens that will be rejected, some exited early
        engine.forward(tok[None], lambda layer, h: h.new_zeros(1))
    engine.truncate(10)
    assert engine.length == 10 and not engine.pending
    out = engine.forward(ids[10:16])
    reference = model(ids[None]).logits[0]
    assert torch.allclose(out.final_logits, reference[10:16], atol=TOL, rtol=0)


def test_bad_inputs_are_rejected():
    model = tiny_gpt_neox()
    adapter = get_adapter(model)
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        ExitEngine(adapter, exit_layers=[5])
    engine = ExitEngine(adapter, max_len=8)
    with pytest.raises(ValueError, match="at least one token"):
        engine.forward(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the context of 8"):
        engine.forward(torch.zeros(9, dtype=torch.long))


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_eager_attention_models_decode_the_same_tokens_as_transformers(family):
    """Eager attention adds its mask to the scores: a boolean mask there gave wrong tokens."""
    from earlyexit.decoding import DecodeSettings, FullDecoding, engine_for

    model = (
        tiny_gpt_neox(seed=11, attn="eager") if family == "gpt_neox" else tiny_llama(seed=11, attn="eager")
    )
    model = model.double().eval()
    adapter = get_adapter(model)
    strategy = FullDecoding()
    engine = engine_for(strategy, adapter)
    for seed in range(4):
        prompt = torch.randint(
            0, model.config.vocab_size, (5 + 3 * seed,), generator=torch.Generator().manual_seed(seed)
        )
        ids = strategy.generate(engine, prompt, DecodeSettings(max_new_tokens=12)).ids
        ref = model.generate(
            prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=12,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )[0, len(prompt):].tolist()  # fmt: skip
        assert ids == ref


def test_attention_that_takes_no_explicit_mask_is_refused_naming_what_works():
    model = tiny_gpt_neox(seed=1)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'.*'sdpa'"):
        ExitEngine(get_adapter(model), exit_layers=[1])
