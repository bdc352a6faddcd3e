"""lm-eval adapter: exact teacher-forced early-exit scoring, and local tasks that run offline."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from conftest import VOCAB, damped_model, naive_teacher_forced, quantile_thresholds, tiny_gpt_neox
from lm_eval.api.instance import Instance
from torch.nn import functional as F

from earlyexit.data.paths import shared_data_dir
from earlyexit.decoding import DecodeSettings, EarlyExitDecoding, FullDecoding, engine_for
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import get_adapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.loading import EMBEDDED_MODEL_DIR, load_model
from earlyexit.tasks.lm_eval_model import EarlyExitLM, early_exit_logits
from earlyexit.tasks.lm_eval_tasks import STDLIB_TASK, evaluate
from earlyexit.tasks.stdlib_task import stdlib_lambada_examples

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
    before = lm.positions
    (cut,) = lm.generate_until([request("generate_until", prompt, {"until": [stop], "max_gen_toks": 24})])
    assert cut == free.split(stop)[0] and stop not in cut
    # The stop is checked as tokens are emitted: nothing past the token that completed it is generated.
    full = (
        FullDecoding()
        .generate(
            engine_for(FullDecoding(), adapter),
            torch.tensor(lm.tok_encode(prompt)),
            DecodeSettings(max_new_tokens=24, eos_token_id=lm.eot_token_id),
        )
        .ids
    )
    first = next(k for k in range(1, len(full) + 1) if stop in lm.tok_decode(full[:k]))
    assert lm.positions - before == first < 24

    # With exits: same interface, heads fire, output is still text.
    heads = HeadSet(adapter, HeadSpec("shared", (3,)))
    policy = ThresholdPolicy(heads, "entropy", {3: -1.0})
    ee = EarlyExitLM(adapter, tok, policy, disable_tqdm=True)
    (text,) = ee.generate_until([request("generate_until", prompt, {"until": ["\n\n"], "max_gen_toks": 16})])
    assert isinstance(text, str) and "\n\n" not in text and 0 < ee.positions <= 16


# ------------------------------------------------------------------------ EarlyExitLM under a KV strategy


@pytest.fixture(scope="module")
def damped():
    """A float64 model whose heads fire often, so where earlier tokens exited matters."""
    model = damped_model(2).double()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    return (
        model,
        adapter,
        ThresholdPolicy(heads, "entropy", quantile_thresholds(adapter, heads, "entropy", 0.5)),
    )


STUB_TOKENIZER = SimpleNamespace(eos_token_id=0, name_or_path="stub")  # token requests need only EOS


def token_requests(n: int = 8, seed: int = 7) -> list[tuple[None, list[int], list[int]]]:
    """Random (None, context, continuation) token requests; the first has a one-token context,
    the second one longer than max_length=16 so it is cut from the left."""
    gen = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> list[int]:
        return torch.randint(
            0, VOCAB, (int(torch.randint(low, high, (1,), generator=gen)),), generator=gen
        ).tolist()

    return [(None, draw(1, 2), draw(3, 5)), (None, draw(20, 24), draw(2, 4))] + [
        (None, draw(1, 10), draw(1, 5)) for _ in range(n - 2)
    ]


def rule_loglikelihood(model, policy, request, rule: str, max_length: int = 16) -> tuple[float, list[int]]:
    """A request's log-likelihood and exits from the brute-force recompute under `rule`, fed as
    EarlyExitLM feeds it: the context but its last token prefilled, the rest one by one."""
    _, ctx, cont = request
    inputs = (ctx + cont)[-(max_length + 1) :][:-1]
    logits, exits = naive_teacher_forced(model, policy, inputs, len(inputs) - len(cont), rule)
    lp = F.log_softmax(logits.float(), -1)
    return float(lp.gather(-1, torch.tensor(cont)[:, None]).sum()), exits


def test_token_by_token_scoring_equals_batched_under_fill(damped):
    """Under fill positions do not depend on earlier exits: both paths give the same scores."""
    _, adapter, policy = damped
    requests = token_requests()
    batched = EarlyExitLM(adapter, STUB_TOKENIZER, policy, batch_size=3, max_length=16, disable_tqdm=True)
    stepped = EarlyExitLM(
        adapter, STUB_TOKENIZER, policy, max_length=16, disable_tqdm=True, token_by_token=True
    )
    assert not batched._scores_token_by_token() and stepped._scores_token_by_token()
    want, got = batched._loglikelihood_tokens(requests), stepped._loglikelihood_tokens(requests)
    for (ll, greedy), (ll2, greedy2) in zip(want, got, strict=True):
        assert ll2 == pytest.approx(ll, abs=1e-9) and greedy2 == greedy
    assert stepped.exit_histogram == batched.exit_histogram
    assert len(batched.exit_histogram) > 1  # exits and full passes both happen
    assert stepped.positions == sum(len(cont) for _, _, cont in requests)


@pytest.mark.parametrize("rule", ["propagate", "skip"])
def test_scores_follow_the_kv_rule(damped, rule):
    model, adapter, policy = damped
    requests = token_requests()
    lm = EarlyExitLM(adapter, STUB_TOKENIZER, policy, max_length=16, disable_tqdm=True, kv=rule)
    assert lm._scores_token_by_token() and lm.get_model_info()["kv"] == rule
    got = lm._loglikelihood_tokens(requests)
    fill = EarlyExitLM(
        adapter, STUB_TOKENIZER, policy, max_length=16, disable_tqdm=True
    )._loglikelihood_tokens(requests)
    histogram, off_fill = Counter(), 0.0
    for request, (ll, _), (ll_fill, _) in zip(requests, got, fill, strict=True):
        want, exits = rule_loglikelihood(model, policy, request, rule)
        assert ll == pytest.approx(want, abs=1e-9), request
        histogram.update(exits)
        off_fill = max(off_fill, abs(ll - ll_fill))
    assert lm.exit_histogram == histogram
    assert sum(n for k, n in histogram.items() if k < adapter.num_layers - 1) >= 8, "heads must fire often"
    assert off_fill > 1e-6, "the rule changed no score: the test would not see a fill in disguise"


def test_one_token_context_is_fed_with_exits(damped):
    """Nothing to prefill: the context's only token is fed like the continuation, and may exit."""
    model, adapter, _ = damped
    heads = HeadSet(adapter, HeadSpec("linear", (1, 3)))
    always = ThresholdPolicy(heads, "entropy", {1: -INF})
    request = (None, [5], [7, 8, 9])
    lm = EarlyExitLM(adapter, STUB_TOKENIZER, always, disable_tqdm=True, kv="skip")
    ((ll, _),) = lm._loglikelihood_tokens([request])
    assert lm.exit_histogram == Counter({1: 3})  # the context token too: no prefill ran
    assert ll == pytest.approx(rule_loglikelihood(model, always, request, "skip")[0], abs=1e-9)


def test_generate_until_decodes_under_the_kv_rule(embedded):
    adapter, tok = embedded
    heads = HeadSet.load(sorted((EMBEDDED_MODEL_DIR / "heads").glob("*.safetensors"))[0], adapter)
    policy = ThresholdPolicy(heads, "entropy", {1: -3.0, 5: -1.5})
    prompt = "def main():\n    "
    lm = EarlyExitLM(adapter, tok, policy, disable_tqdm=True, kv="propagate")
    (text,) = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 16})])
    strategy = EarlyExitDecoding(policy, kv="propagate")
    result = strategy.generate(
        engine_for(strategy, adapter), torch.tensor(tok.encode(prompt)), DecodeSettings(16, 0)
    )
    assert text == tok.decode([t for t in result.ids if t != 0], skip_special_tokens=True)
    assert [engine.kv for engine in lm._engines.values()] == ["propagate"]
    assert lm.exit_histogram[1] + lm.exit_histogram[5] > 0  # the heads fired
    with pytest.raises(ValueError, match="unknown KV strategy 'copy'"):
        EarlyExitLM(adapter, tok, policy, kv="copy")


# ----------------------------------------------------------------------------- stdlib_lambada
# (every other task's resolution and local files: tests/harness/test_tasks.py)


def test_stdlib_lambada_examples_are_deterministic():
    rows = stdlib_lambada_examples(n=50)
    assert rows == stdlib_lambada_examples(n=50) and len(rows) == 50
    for row in rows:
        assert row["target"].isidentifier() and row["target"] in row["context"]
        assert not row["context"].endswith("\n")  # part of the target's line is given


@torch.no_grad()
def hand_scores(adapter, tok, context: str, continuation: str, heads=None, layers=()) -> dict:
    """{layer: (log-likelihood, greedy)} of `continuation` given `context` from one plain forward:
    key None for the final logits, key k for the head at layer k at every position (a policy that
    always exits there). As lm-eval does: trailing spaces of the context move to the continuation,
    and the continuation's tokens are those of the whole text after as many tokens as the context
    alone has."""
    context_enc = tok.encode(context.rstrip())
    whole = tok.encode(context + continuation)
    n_cont = len(whole) - len(context_enc)
    tokens = context_enc + whole[len(context_enc) :]
    target = torch.tensor(tokens[-n_cont:])
    out = adapter.model(torch.tensor([tokens[:-1]]), output_hidden_states=bool(layers))
    scores = {}
    for layer in (None, *layers):
        logits = out.logits[0] if layer is None else heads(layer, out.hidden_states[layer + 1][0])
        lp = F.log_softmax(logits[-n_cont:].float(), -1)
        scores[layer] = float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())
    return scores


def hand_pair(adapter, tok, context: str, continuation: str) -> tuple[float, bool]:
    return hand_scores(adapter, tok, context, continuation)[None]


def test_stdlib_lambada_accuracy_by_hand_and_falling_with_earlier_exits(embedded, cache_dir):
    """In the model's own domain, where accuracy means something: lm-eval's numbers equal a hand
    computation, and exiting every token at an early head costs accuracy and perplexity."""
    adapter, tok = embedded
    heads = HeadSet.load(sorted((EMBEDDED_MODEL_DIR / "heads").glob("*.safetensors"))[0], adapter)
    rows = stdlib_lambada_examples()[:30]
    by_hand = [hand_scores(adapter, tok, r["context"], r["target"], heads, (5, 1)) for r in rows]
    scores = {}
    for name, layer in (("full", None), ("head 5", 5), ("head 1", 1)):
        policy = None if layer is None else ThresholdPolicy(heads, "entropy", {layer: -INF})
        lm = EarlyExitLM(adapter, tok, policy, disable_tqdm=True)
        metrics = evaluate(lm, [STDLIB_TASK], limit=len(rows), offline=True, cache_dir=cache_dir)[STDLIB_TASK]
        hand = [row[layer] for row in by_hand]
        assert metrics["acc"] == pytest.approx(sum(g for _, g in hand) / len(rows)), name
        assert metrics["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in hand) / len(rows))), name
        assert set(lm.exit_histogram) == {adapter.num_layers - 1 if layer is None else layer}
        scores[name] = metrics
    assert scores["full"]["acc"] > max(scores["head 5"]["acc"], scores["head 1"]["acc"]), scores
    ppl = [scores[name]["perplexity"] for name in ("full", "head 5", "head 1")]
    assert ppl == sorted(ppl) and ppl[0] < ppl[1] < ppl[2], scores


LOCAL_FILES = {
    "lambada_openai": "lambada_openai_test.jsonl",
    "piqa": "piqa_validation.jsonl",
    "arc_easy": "arc_easy_validation.jsonl",
    "sciq": "sciq_validation.jsonl",
}


@pytest.mark.skipif(
    shared_data_dir() is None
    or not all((shared_data_dir() / "eval" / f).is_file() for f in LOCAL_FILES.values()),
    reason="../shared/data/eval with the lambada/piqa/arc_easy/sciq JSONL files is absent on this machine",
)
def test_local_tasks_run(embedded, cache_dir):
    lm = EarlyExitLM(*embedded, None, disable_tqdm=True)
    data = shared_data_dir() / "eval"
    results = evaluate(lm, list(LOCAL_FILES), limit=5, offline=True, cache_dir=cache_dir, data_dir=data)
    assert set(results) == set(LOCAL_FILES)
    for task, metrics in results.items():
        assert "acc" in metrics, task
        assert all(math.isfinite(v) for v in metrics.values()), (task, metrics)
    adapter, tok = embedded

    def first(name: str) -> list[dict]:
        return [json.loads(line) for line in (data / name).read_text().splitlines()[:5]]

    # piqa by hand: two choices after "Question: ...\nAnswer:"; acc by summed log-likelihood,
    # acc_norm by log-likelihood per character of the choice.
    acc = acc_norm = 0
    for doc in first(LOCAL_FILES["piqa"]):
        choices = [doc["sol1"], doc["sol2"]]
        context = f"Question: {doc['goal']}\nAnswer:"
        lls = [hand_pair(adapter, tok, context, " " + c)[0] for c in choices]
        acc += max(range(2), key=lambda i: lls[i]) == doc["label"]
        acc_norm += max(range(2), key=lambda i: lls[i] / len(choices[i])) == doc["label"]
    assert results["piqa"]["acc"] == pytest.approx(acc / 5)
    assert results["piqa"]["acc_norm"] == pytest.approx(acc_norm / 5)
    # lambada by hand: the last word after the rest of the passage; greedy match and perplexity.
    words = [doc["text"].split(" ") for doc in first(LOCAL_FILES["lambada_openai"])]
    hand = [hand_pair(adapter, tok, " ".join(w[:-1]), " " + w[-1]) for w in words]
    assert results["lambada_openai"]["acc"] == pytest.approx(sum(g for _, g in hand) / 5)
    want_ppl = math.exp(-sum(ll for ll, _ in hand) / 5)
    assert results["lambada_openai"]["perplexity"] == pytest.approx(want_ppl, rel=1e-4)
