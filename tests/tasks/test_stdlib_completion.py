"""``stdlib_completion``: held-out functions cut inside the body, ended at their dedent, scored.

The prompts must come from held-out modules only and be cut where the rules say, the stop must
end the true source exactly where the function ends (so a right answer is scored as right),
and the embedded model must get some first lines right: a workload it cannot do at all would
hide what a lossy decoding mode costs.
"""

from __future__ import annotations

import ast
import logging
import re

import pytest
import torch

from earlyexit.data.corpus import split_documents
from earlyexit.decoding import DecodeSettings, FullDecoding, StopCheck, engine_for
from earlyexit.model.adapter import get_adapter
from earlyexit.model.loading import load_model
from earlyexit.tasks.stdlib_completion import (
    STDLIB_COMPLETION,
    body_stop,
    edit_similarity,
    first_line_match,
    stdlib_completion_workload,
)

N, PROMPT_TOKENS, NEW_TOKENS = 16, 128, 48


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


@pytest.fixture(scope="module")
def documents():
    return split_documents()


@pytest.fixture(scope="module")
def workload(embedded, documents):
    return stdlib_completion_workload(embedded[1], N, PROMPT_TOKENS, NEW_TOKENS, seed=0, documents=documents)


def located(text: str, documents) -> tuple[str, int]:
    """The held-out document holding ``text`` and where; fails if only a training one does."""
    for doc in documents[1]:
        at = doc.find(text)
        if at >= 0:
            return doc, at
    raise AssertionError(f"not in any held-out document: {text[:80]!r}")


def function_ends(doc: str) -> set[int]:
    """Offsets where a top-level function or method of ``doc`` ends (end of its last line)."""
    starts = [0]
    for line in doc.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return {starts[node.end_lineno] - 1 for node in ast.walk(ast.parse(doc)) if isinstance(node, kinds)}


def test_the_workload_is_deterministic_for_a_seed(embedded, documents, workload):
    again = stdlib_completion_workload(embedded[1], N, PROMPT_TOKENS, NEW_TOKENS, seed=0, documents=documents)
    other = stdlib_completion_workload(embedded[1], N, PROMPT_TOKENS, NEW_TOKENS, seed=1, documents=documents)
    assert again.prompts == workload.prompts
    assert [p.ids for p in other.prompts] != [p.ids for p in workload.prompts]
    assert workload.name == STDLIB_COMPLETION and workload.domain == "Python code"
    assert workload.source == "stdlib" and workload.higher_is_better == {
        "exact_match": True,
        "edit_similarity": True,
    }


def test_prompts_are_held_out_code_cut_at_line_boundaries(embedded, documents, workload):
    tokenizer = embedded[1]
    modules = set()
    for prompt in workload.prompts:
        text = tokenizer.decode(prompt.ids)
        doc, at = located(text + prompt.reference, documents)
        modules.add(doc)
        assert at == 0 or doc[at - 1] == "\n", "the prompt starts mid-line"
        assert text.rsplit("\n", 1)[1].strip() == "", "the prompt ends after a newline and spaces only"
        assert prompt.reference.split("\n", 1)[0].strip(), "the first line to complete has code"
        assert re.search(r"^[ \t]*(async[ \t]+)?def ", text, re.MULTILINE), "the function's start is in it"
        assert not any(text in train for train in documents[0]), "the prompt occurs in training text"
    assert len(modules) >= N * 3 // 4, "the prompts come from a few modules only"


def test_every_prompt_fits_its_token_budgets(embedded, documents):
    tokenizer = embedded[1]
    for prompt_tokens in (64, 128):
        wl = stdlib_completion_workload(tokenizer, 32, prompt_tokens, NEW_TOKENS, documents=documents)
        for prompt in wl.prompts:
            assert 0 < len(prompt.ids) <= prompt_tokens and prompt.max_new_tokens == NEW_TOKENS
            assert len(tokenizer.encode(prompt.reference, add_special_tokens=False)) <= NEW_TOKENS


def test_the_stop_cuts_the_true_source_exactly_at_the_function_end(embedded, documents, workload):
    tokenizer = embedded[1]
    for prompt in workload.prompts:
        text = tokenizer.decode(prompt.ids)
        doc, at = located(text + prompt.reference, documents)
        end = at + len(text) + len(prompt.reference)
        assert end in function_ends(doc), "the reference does not end where a function ends"
        assert prompt.stop.cut(prompt.reference + doc[end:]) == prompt.reference


def test_the_body_stop_fires_on_a_dedent_only():
    stop = body_stop(8)
    body = " x = 1\n\n        if x:\n            y = 2\n        return y"
    assert stop.cut(body) == body  # starts mid-line, blank lines and deeper lines inside
    assert stop.cut(body + "\n\n    def g(self):\n") == body  # the next method
    assert stop.cut(body + "\nclass C:\n") == body  # the next top-level statement
    assert stop.find(body + "\n       ") is None  # a partial indentation is no dedent yet
    assert stop.find(body + "\n\n") is None


def test_scorer_exact_match_and_edit_similarity(workload):
    references = [p.reference for p in workload.prompts]
    right = workload.score([ref + "  \n" for ref in references])  # trailing whitespace ignored
    assert right.aggregate == {"exact_match": 1.0, "edit_similarity": 1.0}
    wrong = workload.score(["zzz = 0\n" + ref.split("\n", 1)[-1] for ref in references])
    assert wrong.aggregate["exact_match"] == 0.0
    reference = " total = a + b\n        return total"
    partly = " total = a + b\n        return None"
    assert first_line_match(partly, reference) == 1.0
    assert 0 < edit_similarity(partly, reference) < 1
    assert first_line_match(" total = a - b\n        return total", reference) == 0.0
    assert edit_similarity("", reference) == 0.0 and edit_similarity("", "") == 1.0


def test_short_and_training_functions_are_skipped_and_too_many_warns(embedded, caplog):
    long_one = "def long_one(a, b):\n    total = a + b\n    total *= 2\n    return total\n"
    seen = "class K:\n    def seen(self):\n        self.a = 1\n        self.b = 2\n        return self.a\n"
    heldout = "import os\n\n\ndef short(x):\n    return x\n\n\n" + long_one + "\n\n" + seen
    with caplog.at_level(logging.WARNING, logger="earlyexit.tasks.stdlib_completion"):
        wl = stdlib_completion_workload(embedded[1], 5, 64, 32, documents=(["x = 1\n" + seen], [heldout]))
    assert len(wl.prompts) == 1
    text = embedded[1].decode(wl.prompts[0].ids)
    assert "def long_one" in text and (text + wl.prompts[0].reference).endswith("return total")
    assert "only 1 held-out functions qualify; keeping all 1" in caplog.text


def test_too_many_prompts_keeps_every_function_and_warns(embedded, documents, caplog):
    with caplog.at_level(logging.WARNING, logger="earlyexit.tasks.stdlib_completion"):
        wl = stdlib_completion_workload(embedded[1], 100_000, PROMPT_TOKENS, NEW_TOKENS, documents=documents)
    kept = len(wl.prompts)
    assert N < kept < 100_000
    assert f"asked for 100000 prompts, but only {kept} held-out functions qualify" in caplog.text
    assert len({p.ids for p in wl.prompts}) == kept


def test_the_embedded_model_completes_some_lines(embedded, workload):
    model, tokenizer = embedded
    torch.manual_seed(0)
    strategy = FullDecoding()
    engine = engine_for(strategy, get_adapter(model))
    texts = []
    for prompt in workload.prompts:
        check = StopCheck(prompt.stop, tokenizer.decode)
        settings = DecodeSettings(prompt.max_new_tokens, tokenizer.eos_token_id, check)
        ids = strategy.generate(engine, torch.tensor(prompt.ids), settings).ids
        texts.append(check.text([t for t in ids if t != tokenizer.eos_token_id]))
    scores = workload.score(texts).aggregate
    print(f"\nstdlib_completion, embedded model, full greedy, {N} prompts: {scores}")
    assert 0 < scores["edit_similarity"] < 1 and 0 <= scores["exact_match"] <= 1
    # The model does the task: its completions are closer to their own references than to other
    # prompts' (unrelated Python code, the metric's floor of about 0.25).
    shifted = texts[1:] + texts[:1]
    floor = workload.score(shifted).aggregate["edit_similarity"]
    print(f"edit similarity against other prompts' references: {floor:.3f}")
    assert scores["edit_similarity"] > floor + 0.03
