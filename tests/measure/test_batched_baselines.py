"""transformers' greedy `generate` on a left-padded batch: batch-1 `full`'s ids per row, honest counts.

- Exactness: in float64 GPT-NeoX and Llama, for B in {1, 2, 4}, every row equals batch-1
  `FullDecoding` on its prompt, token for token: prompts of different lengths, one starting with
  the pad id and holding the EOS id, an EOS and stop strings that end rows at different steps.
  Finished rows keep running until the last row is done, and not a step longer.
- transformers' positions for left-padded rows are each row's own 0, 1, 2... (read off the
  model's inputs); the checkpoint's generation config changes nothing.
- FLOPs: the analytic count equals torch's FlopCounterMode (eager attention, float32: see
  `test_float64_eager_padding_is_refused`), finished rows' and pad rows' work included; batch 1
  equals `hf_generate`'s; the decode trace prices batch 1 as `full` is priced.
- Refusals name the sizes: no prompts, an empty prompt, one that leaves no room, a batch whose
  padded width plus the longest budget exceeds the context.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import damped_llama, damped_model, hand_profile, prompts, tiny_gpt_neox, tiny_llama
from torch.utils.flop_counter import FlopCounterMode

from earlyexit.decoding import DecodeSettings, FullDecoding, Stop, StopCheck, engine_for
from earlyexit.measure.baselines import make_baseline
from earlyexit.measure.batched_baselines import hf_generate_batch, pad_token_for
from earlyexit.measure.cost_model import predict
from earlyexit.model.adapter import get_adapter

BUDGET = 24
MODEL_EOS = 2  # the tiny models' config.eos_token_id


def tagged(ids) -> str:
    """A decode for stop strings: every id as its own tag, so a stop string names a token run."""
    return "".join(f"<{int(i)}>" for i in ids)


def pad_prompt(pad: int, eos: int) -> torch.Tensor:
    """Starts with the pad id (a mask made by comparing ids would drop it) and holds the EOS id."""
    return torch.tensor([pad, 5, pad, 17, eos, 42])


def batches(pad: int, eos: int) -> dict[int, list[torch.Tensor]]:
    """B -> prompts of different lengths (1 to 11 tokens), the pad prompt not the longest."""
    r = prompts(3, seed=23, max_len=12)
    special = pad_prompt(pad, eos)
    return {1: [special], 2: [special, r[0]], 4: [r[0], special, r[1], r[2]]}


def full_ids(adapter, prompt, settings) -> list[int]:
    full = FullDecoding()
    return full.generate(engine_for(full, adapter), prompt, settings).ids


def first_stop_lengths(outputs: list[list[int]], hit) -> list[int]:
    """Each output's length when cut after the first position where ``hit(prefix)``."""
    return [next((k + 1 for k in range(len(o)) if hit(o[: k + 1])), len(o)) for o in outputs]


def settings_cases(adapter) -> dict[str, DecodeSettings]:
    """The budget; an EOS and stop strings chosen from `full`'s outputs on the 4-prompt batch so that
    they end rows at as many different steps as possible (and leave some row to the budget)."""
    plain = DecodeSettings(max_new_tokens=BUDGET)
    four = batches(pad_token_for(adapter.model, plain), MODEL_EOS)[4]
    outputs = [full_ids(adapter, p, plain) for p in four]
    candidates = sorted({t for o in outputs for t in o})
    eos = max(candidates, key=lambda t: len(set(first_stop_lengths(outputs, lambda ids: ids[-1] == t))))
    # Stop strings: bigrams from two rows' outputs, at different steps, and one that never fires.
    strings = (tagged(outputs[0][3:5]), tagged(outputs[2][8:10]), "<999>")
    return {
        "budget": plain,
        "eos": DecodeSettings(max_new_tokens=BUDGET, eos_token_id=eos),
        "stop": DecodeSettings(max_new_tokens=BUDGET, stop=StopCheck(Stop(strings), tagged)),
    }


MODELS = {"neox": lambda: damped_model(3).double(), "llama": lambda: damped_llama(4)}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    """(model, adapter, settings per case, `full`'s ids per (case, prompt))."""
    model = MODELS[request.param]()
    adapter = get_adapter(model)
    settings = settings_cases(adapter)
    want = {}
    for name, s in settings.items():
        for prompt in batches(pad_token_for(model, s), s.eos_token_id or MODEL_EOS)[4]:
            want[name, tuple(prompt.tolist())] = full_ids(adapter, prompt, s)
    return model, adapter, settings, want


# ------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_every_row_equals_batch_one_full(case, batch):
    model, adapter, settings, want = case
    for name, s in settings.items():
        group = batches(pad_token_for(model, s), s.eos_token_id or MODEL_EOS)[batch]
        expected = [want[name, tuple(p.tolist())] for p in group]
        lengths = [len(e) for e in expected]
        if batch == 4 and name != "budget":  # the case is what it claims: rows end at different steps
            assert len(set(lengths)) > 1 and min(lengths) < BUDGET, (name, lengths)
        if batch > 1:
            assert len({p.numel() for p in group}) > 1  # padding happens
        got = hf_generate_batch(model, group, s)
        assert got.ids == expected, (name, batch)
        assert got.budgets == [BUDGET] * batch and got.padded_len == max(p.numel() for p in group)
        # Finished rows are fed pads until the last row is done, and generation ends there.
        assert got.generated == max(lengths)
        assert got.forward_passes == got.generated  # the prefill makes the first token, a pass each after
        prefill, *decode = got.passes
        assert (prefill.batch, prefill.rows, prefill.kv_len) == (batch, got.padded_len, got.padded_len)
        assert [(p.batch, p.rows, p.kv_len) for p in decode] == [
            (batch, 1, got.padded_len + k) for k in range(1, len(decode) + 1)
        ]
        assert all(p.logits_rows == 1 for p in got.passes)
        assert got.tokens == sum(lengths) and 0 < got.ttft_s <= got.total_s


def test_left_padded_rows_get_their_own_positions():
    """transformers derives position ids from the mask (pads at 0, each row's tokens from 0) and
    extends them per step: nothing needs passing for left-padded RoPE models to see batch-1 positions
    (which the ids alone could not show: RoPE attention depends on position differences only)."""
    for model in (tiny_gpt_neox(seed=1), tiny_llama(seed=1)):
        group = prompts(3, seed=31, max_len=9)
        lengths = [p.numel() for p in group]
        assert len(set(lengths)) > 1
        seen: list[torch.Tensor] = []

        def record(module, args, kwargs, seen=seen):
            seen.append(kwargs["position_ids"].clone())

        hook = model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            got = hf_generate_batch(model, group, DecodeSettings(max_new_tokens=5))
        finally:
            hook.remove()
        width = got.padded_len
        assert len(seen) == got.forward_passes == 5
        for i, n in enumerate(lengths):
            assert seen[0][i, width - n :].tolist() == list(range(n))
            assert [step[i].tolist() for step in seen[1:]] == [[n + k] for k in range(4)]


def test_the_checkpoints_generation_config_changes_nothing():
    model = damped_model(3).double()
    adapter = get_adapter(model)
    group = batches(0, MODEL_EOS)[4]
    settings = DecodeSettings(max_new_tokens=16)
    want = [full_ids(adapter, p, settings) for p in group]
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.eos_token_id = want[1][3]
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.no_repeat_ngram_size = 2
    config = model.generation_config
    assert hf_generate_batch(model, group, settings).ids == want
    assert model.generation_config is config and not model._forward_hooks  # restored


def test_a_configured_pad_id_pads_and_changes_nothing():
    model = damped_llama(4)
    adapter = get_adapter(model)
    model.config.pad_token_id = 11
    settings = DecodeSettings(max_new_tokens=12, eos_token_id=MODEL_EOS)
    assert pad_token_for(model, settings) == 11
    group = batches(11, MODEL_EOS)[4]
    assert hf_generate_batch(model, group, settings).ids == [full_ids(adapter, p, settings) for p in group]
    model.config.pad_token_id = None
    assert pad_token_for(model, settings) == MODEL_EOS
    assert pad_token_for(model, DecodeSettings()) == 0


# ------------------------------------------------------------------------------ FLOPs


@pytest.mark.parametrize("build", [tiny_gpt_neox, tiny_llama])
def test_analytic_flops_equal_the_flop_counter(build):
    """Eager attention (FlopCounterMode does not count CPU SDPA kernels) in float32 (float64 eager
    with padding gives NaN in transformers). One row finishes early and is computed on: counted."""
    model = build(seed=6, attn="eager").float()
    group = [torch.tensor([3, 1, 4, 1, 5, 9, 2]), torch.tensor([6, 5]), torch.tensor([3, 5, 8, 9])]
    plain = hf_generate_batch(model, group, DecodeSettings(max_new_tokens=12))
    single = make_baseline("hf_generate", model)  # float32 eager pads without NaN: batch-1's ids
    assert plain.ids == [single.generate(None, p, DecodeSettings(max_new_tokens=12)).ids for p in group]
    eos = plain.ids[1][2]  # ends row 1 at its third token at the latest
    settings = DecodeSettings(max_new_tokens=12, eos_token_id=eos)
    with FlopCounterMode(display=False) as counter:
        got = hf_generate_batch(model, group, settings)
    assert min(map(len, got.ids)) < got.generated  # a finished row kept running
    assert got.flops_total == counter.get_total_flops()
    # The prefill is the padded batch's forward with one logits row per sequence.
    width = got.padded_len
    ids = torch.stack([torch.cat([torch.zeros(width - p.numel(), dtype=torch.long), p]) for p in group])
    mask = (torch.arange(width)[None] >= torch.tensor([width - p.numel() for p in group])[:, None]).long()
    with FlopCounterMode(display=False) as prefill, torch.no_grad():
        model(ids, attention_mask=mask, logits_to_keep=1)
    assert got.flops_prefill == prefill.get_total_flops()
    assert got.flops == counter.get_total_flops() - prefill.get_total_flops() > 0


def test_batch_one_costs_what_hf_generate_costs():
    """One sequence: the same FLOPs as the batch-1 baseline, and the decode trace prices as `full`'s."""
    model = damped_model(3).double()
    adapter = get_adapter(model)
    prompt = pad_prompt(0, MODEL_EOS)
    settings = DecodeSettings(max_new_tokens=10)
    got = hf_generate_batch(model, [prompt], settings)
    single = make_baseline("hf_generate", model).generate(None, prompt, settings)
    assert got.ids == [single.ids] and got.flops == single.stats.flops
    full = FullDecoding().generate(engine_for(FullDecoding(), adapter), prompt, settings)
    assert got.trace.passes == full.stats.trace.passes == 9
    profile = hand_profile()
    mine = predict(got.trace, got.tokens - 1, profile, "full", None)
    assert mine == pytest.approx(predict(full.stats.trace, full.stats.tokens - 1, profile, "full", None))


def test_the_decode_trace_is_every_pass_after_the_prefill_with_all_rows():
    model = tiny_llama(seed=2)
    group = prompts(4, seed=41, max_len=8)
    got = hf_generate_batch(model, group, DecodeSettings(max_new_tokens=6))
    width, depth = got.padded_len, model.config.num_hidden_layers
    assert got.trace.passes == got.forward_passes - 1 == 5
    assert dict(got.trace.segments) == {(depth, 4, 0, width + k, False, 0, 0, 0): 1 for k in range(1, 6)}
    assert dict(got.trace.unembed) == {4: 5}


# ------------------------------------------------------------------------------ refusals


def test_bad_batches_are_refused_naming_the_sizes():
    model = tiny_gpt_neox(seed=0)  # 128 positions
    s = DecodeSettings(max_new_tokens=30)
    with pytest.raises(ValueError, match="no prompts"):
        hf_generate_batch(model, [], s)
    with pytest.raises(ValueError, match=r"empty prompt \(prompt 1 of the batch of 2\)"):
        hf_generate_batch(model, [torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], s)
    with pytest.raises(ValueError, match="prompt 0 of 128 tokens leaves no room in the context of 128"):
        hf_generate_batch(model, [torch.arange(128) % 97, torch.tensor([1])], s)
    with pytest.raises(ValueError, match="prompt 0 of 20 tokens leaves no room in the context of 20"):
        hf_generate_batch(model, [torch.arange(20)], s, max_len=20)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        hf_generate_batch(model, [torch.tensor([1])], DecodeSettings(max_new_tokens=0))
    # 120 + 30 would overrun: the short prompt's budget is 30, the long one's only 8.
    long, short = torch.arange(120) % 97, torch.tensor([4, 5])
    with pytest.raises(ValueError, match=r"left-padded to 120 tokens.*budget is 30.*120 \+ 30 = 150") as info:
        hf_generate_batch(model, [long, short], s)
    assert "context of 128 tokens" in str(info.value)
    # It fits when the budget does, or when every prompt has the same length (each row's budget 8).
    assert len(hf_generate_batch(model, [long, short], DecodeSettings(max_new_tokens=8)).ids[1]) == 8
    got = hf_generate_batch(model, [long, (torch.arange(120) + 3) % 97], s)
    assert got.budgets == [8, 8] and [len(i) for i in got.ids] == [8, 8]


def test_float64_eager_padding_is_refused():
    """transformers' eager attention takes its softmax in float32, where float64's mask value is -inf:
    a padded batch turns NaN (checked here, so the refusal goes once transformers fixes it)."""
    model = tiny_llama(seed=0, attn="eager")
    ids, mask = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        assert model(ids, attention_mask=mask).logits.isnan().any()
    with pytest.raises(ValueError, match="eager attention in float64"):
        hf_generate_batch(model, [torch.tensor([5, 6]), torch.tensor([1, 2, 3, 4])], DecodeSettings(4))
    # Without padding there is nothing to refuse.
    got = hf_generate_batch(model, [torch.tensor([5, 6]), torch.tensor([1, 2])], DecodeSettings(4))
    assert [len(i) for i in got.ids] == [4, 4]


def test_each_prompt_keeps_its_own_budget_and_stops(case):
    """A workload's prompts carry their own settings: one batch, each row cut by its own."""
    model, adapter, settings, _ = case
    group = batches(pad_token_for(model, settings["budget"]), MODEL_EOS)[4]
    rows = [
        DecodeSettings(max_new_tokens=5),
        settings["stop"],
        DecodeSettings(max_new_tokens=BUDGET - 3),
        DecodeSettings(max_new_tokens=9, stop=settings["stop"].stop),
    ]
    got = hf_generate_batch(model, group, rows)
    assert got.ids == [full_ids(adapter, p, s) for p, s in zip(group, rows, strict=True)]
    assert got.budgets == [5, BUDGET, BUDGET - 3, 9]
    with pytest.raises(ValueError, match="3 settings for 4 prompts"):
        hf_generate_batch(model, group, rows[:3])
    with pytest.raises(ValueError, match="must share their EOS id"):
        hf_generate_batch(model, group, [*rows[:3], DecodeSettings(max_new_tokens=9, eos_token_id=7)])
