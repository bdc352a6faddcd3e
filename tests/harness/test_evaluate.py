"""lm-eval adapter: exact teacher-forced early-exit scoring, and local tasks that run offline."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from conftest import tiny_gpt_neox
from lm_eval.api.instance import Instance
from torch.nn import functional as F

from earlyexit.decoding import DecodeSettings, EarlyExitDecoding
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.harness.lm_eval_model import EarlyExitLM, early_exit_logits
from earlyexit.harness.stdlib_task import stdlib_lambada_examples
from earlyexit.harness.tasks import STDLIB_TASK, evaluate
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.loading import load_model

INF = float("inf")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the hub; datasets/huggingface_hub read these flags at import."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_gpt_neox(layers=6)
    adapter = get_adapter(model)
    return adapter, HeadSet(adapter, HeadSpec("linear", (1, 3)))


@pytest.fixture(scope="module")
def embedded():
    model, tokenizer = load_model("embedded")
    return get_adapter(model), tokenizer


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("eval-cache")


def ids(batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 97, (batch, seq), generator=torch.Generator().manual_seed(seed))


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def median_threshold(adapter, heads, layer: int, metric: str = "entropy") -> float:
    hidden = adapter.model(ids(4, 32, seed=5), output_hidden_states=True).hidden_states[layer + 1]
    return ThresholdPolicy(heads, metric, {}).metric(heads(layer, hidden)).median().item()


# ----------------------------------------------------------------------------- early_exit_logits


@torch.no_grad()
def test_no_policy_is_the_full_model(tiny):
    adapter, heads = tiny
    x = ids()
    logits, exits = early_exit_logits(adapter, None, None, x)
    assert torch.equal(logits, adapter.model(x).logits)
    assert (exits == adapter.num_layers - 1).all()
    # A policy whose heads can never fire is the full model too.
    never = ThresholdPolicy(heads, "entropy", {1: INF, 3: INF})
    logits2, exits2 = early_exit_logits(adapter, heads, never, x)
    assert torch.equal(logits2, logits) and torch.equal(exits2, exits)


@torch.no_grad()
def test_minus_inf_threshold_exits_everywhere_at_first_head(tiny):
    adapter, heads = tiny
    x = ids()
    policy = ThresholdPolicy(heads, "entropy", {1: -INF, 3: -INF})
    logits, exits = early_exit_logits(adapter, heads, policy, x)
    hidden = adapter.model(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(logits, heads(1, hidden[2]), rtol=0, atol=1e-12)
    assert (exits == 1).all()


@torch.no_grad()
def test_nan_scores_never_exit(tiny):
    adapter, _ = tiny
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    heads.heads["1"].proj.weight.fill_(float("nan"))
    x = ids()
    logits, exits = early_exit_logits(adapter, heads, ThresholdPolicy(heads, "max-prob", {1: -INF}), x)
    assert torch.equal(logits, adapter.model(x).logits) and (exits == adapter.num_layers - 1).all()
    # A broken first head falls through to the next head that passes.
    logits, exits = early_exit_logits(adapter, heads, ThresholdPolicy(heads, "max-prob", {1: -INF, 3: 0}), x)
    hidden = adapter.model(x, output_hidden_states=True).hidden_states
    assert (exits == 3).all() and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, heads(3, hidden[4]), rtol=0, atol=1e-12)


@torch.no_grad()
def test_mixed_exits_match_the_engine(tiny):
    """Teacher forcing the engine's own output reproduces its tokens and its exit histogram."""
    adapter, heads = tiny
    policy = ThresholdPolicy(
        heads,
        "entropy",
        {1: median_threshold(adapter, heads, 1), 3: median_threshold(adapter, heads, 3)},
    )
    strategy = EarlyExitDecoding(policy)
    engine = ExitEngine(adapter, exit_layers=strategy.exit_layers)
    prompt = ids(1, 6, seed=3)[0]
    result = strategy.generate(engine, prompt, DecodeSettings(max_new_tokens=24))
    full = torch.cat([prompt, torch.tensor(result.ids[:-1])])[None]
    logits, exits = early_exit_logits(adapter, heads, policy, full)
    # Position len(prompt) - 1 is the engine's prefill (full depth); later ones are decode steps.
    steps = slice(len(prompt), full.shape[1])
    assert logits[0, steps].argmax(-1).tolist() == result.ids[1:]
    assert Counter(exits[0, steps].tolist()) == result.stats.exit_histogram
    assert len(set(exits[0].tolist())) > 1  # the median thresholds give both exits and full passes


# ----------------------------------------------------------------------------- EarlyExitLM


@torch.no_grad()
def hand_loglikelihood(adapter, tokens: list[int], n_cont: int) -> tuple[float, bool]:
    logits = adapter.model(torch.tensor([tokens[:-1]])).logits[0, -n_cont:]
    lp = F.log_softmax(logits.float(), -1)
    target = torch.tensor(tokens[-n_cont:])
    return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


def test_loglikelihood_equals_hand_computation(embedded):
    adapter, tok = embedded
    lm = EarlyExitLM(adapter, tok, None, batch_size=2, disable_tqdm=True)
    pairs = [
        ("def area(width, height):\n    return width *", " height"),
        ("import os\nimport sys\n\nprint(sys.", "argv)"),
        ("for i in range(", "10):\n        pass"),
        ("x = ", "1"),
    ]
    got = lm.loglikelihood([request("loglikelihood", c, t) for c, t in pairs])
    scored = 0
    for (ctx, cont), (logprob, greedy) in zip(pairs, got, strict=True):
        ctx_enc = tok.encode(ctx.rstrip())  # lm-eval moves the context's trailing spaces to the target
        whole = tok.encode(ctx + cont)
        want_lp, want_greedy = hand_loglikelihood(adapter, whole, len(whole) - len(ctx_enc))
        assert logprob == pytest.approx(want_lp, abs=1e-4) and greedy == want_greedy
        scored += len(whole) - len(ctx_enc)
    assert lm.exit_histogram == Counter({adapter.num_layers - 1: scored})

    # An empty context conditions on EOS, as lm-eval's HFLM does.
    ((logprob, _),) = lm.loglikelihood([request("loglikelihood", "", "import os")])
    cont = tok.encode("import os")
    assert logprob == pytest.approx(
        hand_loglikelihood(adapter, [tok.eos_token_id, *cont], len(cont))[0], abs=1e-4
    )


def test_loglikelihood_truncates_context_from_the_left(embedded):
    adapter, tok = embedded
    lm = EarlyExitLM(adapter, tok, None, max_length=16, disable_tqdm=True)
    ctx, cont = "def f(a, b, c):\n    total = a + b + c\n    return", " total"
    whole = tok.encode(ctx + cont)
    n_cont = len(whole) - len(tok.encode(ctx))
    assert len(whole) > 17
    ((logprob, _),) = lm.loglikelihood([request("loglikelihood", ctx, cont)])
    assert logprob == pytest.approx(hand_loglikelihood(adapter, whole[-17:], n_cont)[0], abs=1e-4)


def test_loglikelihood_rolling(embedded):
    adapter, tok = embedded
    text = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n"
    tokens = tok.encode(text)
    lm = EarlyExitLM(adapter, tok, None, disable_tqdm=True)
    (total,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    want = hand_loglikelihood(adapter, [tok.eos_token_id, *tokens], len(tokens))[0]
    assert total == pytest.approx(want, abs=1e-3)
    # Short windows: every token is still predicted exactly once.
    short = EarlyExitLM(adapter, tok, None, max_length=8, disable_tqdm=True)
    (total_short,) = short.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert math.isfinite(total_short) and short.positions == len(tokens)


def test_generate_until_respects_until_and_max_gen_toks(embedded):
    adapter, tok = embedded
    lm = EarlyExitLM(adapter, tok, None, disable_tqdm=True)
    prompt = "def main():\n    "
    (free,) = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 24})])
    assert 0 < lm.positions <= 24 and len(free) >= 4
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    (cut,) = lm.generate_until([request("generate_until", prompt, {"until": [stop], "max_gen_toks": 24})])
    assert cut == free.split(stop)[0] and stop not in cut

    # With exits: same interface, heads fire, output is still text.
    heads = HeadSet(adapter, HeadSpec("shared", (3,)))
    policy = ThresholdPolicy(heads, "entropy", {3: -1.0})
    ee = EarlyExitLM(adapter, tok, policy, disable_tqdm=True)
    (text,) = ee.generate_until([request("generate_until", prompt, {"until": ["\n\n"], "max_gen_toks": 16})])
    assert isinstance(text, str) and "\n\n" not in text and 0 < ee.positions <= 16


# ----------------------------------------------------------------------------- stdlib_lambada
# (every other task's resolution and local files: tests/harness/test_tasks.py)


def test_stdlib_lambada_examples_are_deterministic():
    rows = stdlib_lambada_examples(n=50)
    assert rows == stdlib_lambada_examples(n=50) and len(rows) == 50
    for row in rows:
        assert row["target"].isidentifier() and row["target"] in row["context"]
        assert not row["context"].endswith("\n")  # part of the target's line is given


def test_stdlib_lambada_end_to_end(embedded, cache_dir):
    adapter, tok = embedded
    heads = HeadSet(adapter, HeadSpec("shared", (3,)))
    lm = EarlyExitLM(adapter, tok, ThresholdPolicy(heads, "entropy", {3: -2.0}), disable_tqdm=True)
    results = evaluate(lm, [STDLIB_TASK], limit=20, cache_dir=cache_dir)
    metrics = results[STDLIB_TASK]
    assert 0.0 <= metrics["acc"] <= 1.0 and math.isfinite(metrics["perplexity"]) and metrics["perplexity"] > 1
    assert set(lm.exit_histogram) == {3, adapter.num_layers - 1} and lm.positions >= 20
