"""A task whose data does not fit its prompts stops the run before any model loads, and a task
that lm-eval warns about while scoring is never stored as ok (issue: no silent garbage)."""

from __future__ import annotations

import pytest
from eval_data import ROWS, write_jsonl

from earlyexit.model.adapter import get_adapter
from earlyexit.model.loading import load_model
from earlyexit.tasks import lm_eval_tasks as tasks_module
from earlyexit.tasks import task_build
from earlyexit.tasks.lm_eval_model import EarlyExitLM
from earlyexit.tasks.lm_eval_tasks import evaluate, resolve_tasks
from earlyexit.tasks.task_checks import TaskDataError, check_documents, expected_fields


@pytest.fixture(autouse=True)
def offline(hf_offline, monkeypatch):
    monkeypatch.setattr(tasks_module, "_memo", {})


def google_boolq_rows(n: int = 6) -> list[dict]:
    """google/boolq's columns; lm-eval's boolq reads super_glue's (`label`, not `answer`)."""
    return [{"question": f"is it {i}", "passage": "a passage " * 4, "answer": bool(i % 2)} for i in range(n)]


def test_a_multiple_choice_file_in_another_datasets_columns_is_refused(tmp_path):
    write_jsonl(tmp_path / "boolq_validation.jsonl", google_boolq_rows())
    with pytest.raises(TaskDataError) as info:
        resolve_tasks(["boolq"], data_dir=tmp_path)
    message = str(info.value)
    assert "task 'boolq'" in message and str(tmp_path / "boolq_validation.jsonl") in message
    assert "doc_to_target reads the missing field(s) ['label']" in message
    assert "reads the fields ['label', 'passage', 'question']" in message
    assert "the documents have ['answer', 'passage', 'question']" in message


def test_the_same_task_in_its_own_columns_passes(tmp_path):
    rows = [
        {"question": r["question"], "passage": r["passage"], "label": int(r["answer"])}
        for r in google_boolq_rows()
    ]
    write_jsonl(tmp_path / "boolq_validation.jsonl", rows)
    (resolved,) = resolve_tasks(["boolq"], data_dir=tmp_path)
    assert resolved.source == "data_dir"


def test_an_out_of_range_label_is_refused(tmp_path):
    rows = [dict(r) for r in ROWS["piqa"]]
    rows[1]["label"] = 2  # piqa has two solutions
    write_jsonl(tmp_path / "piqa_validation.jsonl", rows)
    with pytest.raises(TaskDataError, match=r"target 2 is neither an index below 2 .*document 1"):
        resolve_tasks(["piqa"], data_dir=tmp_path)


def test_a_generation_task_in_other_columns_is_refused(tmp_path):
    rows = [{"question": "who wrote hamlet", "answers": ["shakespeare"]}] * 3  # nq_open reads `answer`
    write_jsonl(tmp_path / "nq_open_validation.jsonl", rows)
    with pytest.raises(ValueError) as info:  # lm-eval's own build already fails on the template here
        resolve_tasks(["nq_open"], data_dir=tmp_path)
    message = str(info.value)
    assert "nq_open_validation.jsonl" in message and "'answer' is undefined" in message
    assert "columns ['answers', 'question']" in message


def test_a_generation_task_with_empty_targets_is_refused(tmp_path):
    rows = [{"question": "who wrote hamlet", "answer": []}] * 3  # the right columns, no answers
    write_jsonl(tmp_path / "nq_open_validation.jsonl", rows)
    with pytest.raises(
        TaskDataError, match=r"task 'nq_open' .*doc_to_target gives \[\] \(document 0, 1, 2\)"
    ):
        resolve_tasks(["nq_open"], data_dir=tmp_path)


def test_expected_fields_are_columns_and_template_variables(tmp_path):
    write_jsonl(tmp_path / "nq_open_validation.jsonl", [{"question": "q", "answer": ["a"]}])
    (resolved,) = resolve_tasks(["nq_open"], data_dir=tmp_path)
    task = task_build._build("nq_open", resolved.config)
    assert expected_fields(task) == {"doc_to_text": {"question"}, "doc_to_target": {"answer"}}
    assert check_documents(task, "nq_open") == 1


@pytest.fixture(scope="module")
def lm():
    model, tokenizer = load_model("embedded")
    return EarlyExitLM(get_adapter(model), tokenizer, None, disable_tqdm=True)


def test_a_bad_label_past_the_checked_documents_fails_the_scoring(lm, tmp_path):
    rows = [dict(ROWS["piqa"][i % len(ROWS["piqa"])]) for i in range(8)]
    rows[7]["label"] = 5  # past the documents checked before loading
    write_jsonl(tmp_path / "piqa_validation.jsonl", rows)
    resolved = resolve_tasks(["piqa"], data_dir=tmp_path)
    with pytest.raises(TaskDataError, match=r"lm-eval warned 1 time\(s\) while scoring piqa: Label index"):
        evaluate(lm, resolved, limit=8, cache_dir=tmp_path)
    rows[7]["label"] = 1
    write_jsonl(tmp_path / "piqa_validation.jsonl", rows)
    tasks_module._memo.clear()
    scores = evaluate(lm, resolve_tasks(["piqa"], data_dir=tmp_path), limit=8, cache_dir=tmp_path)
    assert 0.0 <= scores["piqa"]["acc"] <= 1.0
