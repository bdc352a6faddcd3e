"""The timing protocol: interleaved order, the speedup's bootstrap interval, and equal work = noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import damped_model, prompts

from earlyexit.decoding import DecodeSettings, DecodeStats, DSSDDecoding, FullDecoding
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.measure.protocol import Measured, interleaved_rounds, measure_interleaved, speedup_interval
from earlyexit.model.adapter import get_adapter
from earlyexit.model.loading import EMBEDDED_MODEL_DIR, load_model


class Recorder:
    """A strategy that records the order it is called in and delegates to `full`."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.inner = name, log, FullDecoding()
        self.exit_layers, self.heads = [], None

    def generate(self, engine, prompt, settings):
        self.log.append(self.name)
        return self.inner.generate(engine, prompt, settings)


def test_modes_alternate_order_on_every_sample_after_an_untimed_warmup():
    adapter = get_adapter(damped_model(0))
    log: list[str] = []
    lineup = [Recorder("A", log), Recorder("B", log)]
    out = measure_interleaved(
        lineup, adapter, prompts(3, 0), DecodeSettings(max_new_tokens=3), repeats=2, warmup=1
    )
    assert log[:2] == ["A", "B"]  # warm-up: each mode once, untimed
    assert "".join(log[2:]) == "ABBAABBAABBA"  # 6 samples: A B, B A, A B, ...
    assert [len(m.samples) for m in out] == [6, 6]
    assert [len(m.ids) for m in out] == [3, 3]


def test_between_runs_after_each_sample_and_a_true_answer_rewarms_every_mode():
    adapter = get_adapter(damped_model(0))
    log: list[str] = []
    lineup = [Recorder("A", log), Recorder("B", log)]

    def between(j: int) -> bool:
        log.append(str(j))
        return j == 1  # something ran that left the machine cold

    out = measure_interleaved(
        lineup,
        adapter,
        prompts(2, 0),
        DecodeSettings(max_new_tokens=3),
        repeats=2,
        warmup=1,
        between=between,
    )
    # warm-up; samples 0 and 1; after 1 an untimed A B; samples 2 and 3; no re-warm after the last.
    assert "".join(log) == "AB" + "AB0" + "BA1" + "AB" + "AB2" + "BA3"
    assert [len(m.samples) for m in out] == [4, 4]


class CountingRounds:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, rounds: int = 1) -> None:
        self.calls.append(rounds)


@pytest.mark.parametrize(
    ("samples", "wanted", "blocks", "after", "sizes"),
    [
        (24, 15, 3, [7, 15, 23], [5, 5, 5]),  # the runner's default: a block after each repeat
        (24, 30, 3, [7, 15, 23], [10, 10, 10]),
        (16, 7, 2, [7, 15], [3, 4]),
        (2, 3, 1, [1], [3]),  # one repeat: every round after the last sample
        (3, 4, 5, [0, 1, 2], [1, 1, 2]),  # more blocks than samples: one per sample
    ],
)
def test_profile_rounds_come_in_blocks_the_last_after_the_last_sample(samples, wanted, blocks, after, sizes):
    rounds = CountingRounds()
    hook = interleaved_rounds(rounds, samples, wanted, blocks)
    ran, block_sizes = [], []
    for j in range(samples):
        before = sum(rounds.calls)
        if hook(j):
            ran.append(j)
            block_sizes.append(sum(rounds.calls) - before)
        else:
            assert sum(rounds.calls) == before  # nothing runs between the other samples
    assert ran == after and block_sizes == sizes and sum(rounds.calls) == wanted


def test_a_block_of_profile_rounds_shows_its_own_progress(capsys):
    rounds = CountingRounds()
    hook = interleaved_rounds(rounds, samples=2, wanted=3, blocks=1, progress=True)
    assert not hook(0) and hook(1)
    assert "cost profile" in capsys.readouterr().err and sum(rounds.calls) == 3
    quiet = interleaved_rounds(CountingRounds(), samples=2, wanted=3, blocks=1)
    assert quiet(1) and "cost profile" not in capsys.readouterr().err


def test_profile_rounds_need_samples_rounds_and_blocks():
    for bad in ((0, 3, 1), (4, 0, 1), (4, 3, 0)):
        with pytest.raises(ValueError, match=f"got {bad[0]}, {bad[1]}, {bad[2]}"):
            interleaved_rounds(CountingRounds(), *bad)


def _measured(name: str, tpots_ms: list[float]) -> Measured:
    samples = []
    for t in tpots_ms:
        s = DecodeStats(tokens=11)
        s.ttft_s, s.total_s = 0.0, 10 * t / 1e3
        samples.append(s)
    return Measured(name, samples=samples, prompts=len(samples))


def test_speedup_is_the_ratio_of_medians_with_an_interval_around_it():
    gen = np.random.default_rng(1)
    base = list(10 + gen.normal(0, 0.3, 40))
    fast = list(5 + gen.normal(0, 0.15, 40))
    out = speedup_interval(_measured("full", base), _measured("dssd", fast))
    assert out["speedup"] == pytest.approx(np.median(base) / np.median(fast))
    assert out["speedup_ci_low"] < out["speedup"] < out["speedup_ci_high"]
    assert 1.8 < out["speedup_ci_low"] and out["speedup_ci_high"] < 2.2
    assert out["within_noise"] is False and out["timing_samples"] == 40


def test_same_distribution_is_within_noise_and_a_real_gap_is_not():
    gen = np.random.default_rng(2)
    a, b = list(10 + gen.normal(0, 1, 30)), list(10 + gen.normal(0, 1, 30))
    assert speedup_interval(_measured("full", a), _measured("x", b))["within_noise"] is True
    slower = [t * 1.3 for t in b]
    assert speedup_interval(_measured("full", a), _measured("x", slower))["within_noise"] is False


def test_unpaired_samples_are_refused():
    with pytest.raises(ValueError, match="paired"):
        speedup_interval(_measured("full", [1.0, 2.0]), _measured("x", [1.0]))


def test_a_mode_doing_full_work_comes_out_within_noise_on_the_embedded_model():
    """DSSD whose thresholds never fire computes exactly what `full` does: the protocol must not
    report a speedup (the issue's 1.318x from measuring `full` first and cold)."""
    model, tokenizer = load_model("embedded", dtype=torch.float32, device="cpu")
    adapter = get_adapter(model)
    heads = HeadSet.load(sorted((EMBEDDED_MODEL_DIR / "heads").glob("*.safetensors"))[0], adapter)
    never = ThresholdPolicy(heads, "entropy", dict.fromkeys(heads.layers, math.inf))
    text = "def main(argv):\n    parser = argparse.ArgumentParser()\n    return parser.parse_args(argv)\n"
    ids = torch.tensor(tokenizer(text * 4)["input_ids"])
    prompt_list = [ids[i : i + 24] for i in range(0, 48, 8)]
    full, dssd = measure_interleaved(
        [FullDecoding(), DSSDDecoding(never)],
        adapter,
        prompt_list,
        DecodeSettings(max_new_tokens=16),
        repeats=3,
    )
    work = [m.summary() for m in (full, dssd)]
    assert work[0]["layers_per_token"] == work[1]["layers_per_token"] == adapter.num_layers
    assert work[0]["flops_per_token"] == work[1]["flops_per_token"]
    assert full.ids == dssd.ids
    result = speedup_interval(full, dssd)
    assert result["within_noise"], result


def test_summary_reports_acceptance_both_ways_over_one_repeat():
    """Head drafts only, and as the DSSD demo counts (full-model tokens as drafts): over the first
    repeat's prompts, (3 + 4) / (4 + 6) and (3 + 4 + 1 + 2) / (4 + 6 + 2 + 3)."""
    first = [
        DecodeStats(tokens=9, drafted=4, accepted=3, full_model_drafts=2, full_model_drafts_accepted=1),
        DecodeStats(tokens=9, drafted=6, accepted=4, full_model_drafts=3, full_model_drafts_accepted=2),
    ]
    again = [DecodeStats(tokens=9, drafted=1, full_model_drafts=9) for _ in first]  # a repeat: not work
    for s in (*first, *again):
        s.ttft_s, s.total_s = 0.001, 0.009
    out = Measured("dssd", samples=[*first, *again], prompts=2).summary()
    assert out["acceptance_rate"] == pytest.approx(7 / 10)
    assert out["acceptance_rate_demo"] == pytest.approx(10 / 15)
    assert out["full_model_drafts"] == 5
    no_drafts = Measured("full", samples=[DecodeStats(tokens=9, ttft_s=0.001, total_s=0.009)], prompts=1)
    assert math.isnan(no_drafts.summary()["acceptance_rate_demo"])
