"""Any lm-eval task offline, three ways (datasets cache, task.data_dir, task.include_path), each
resolved before any model loads, and the errors a user sees when none of them provides a task."""

from __future__ import annotations

from pathlib import Path

import datasets
import lm_eval
import pytest
import yaml
from eval_data import ROWS, SCORED, write_jsonl, write_suite
from hub_cache import seed_datasets_cache
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from earlyexit.data.paths import shared_data_dir
from earlyexit.model.adapter import get_adapter
from earlyexit.model.loading import load_model
from earlyexit.tasks import lm_eval_tasks as tasks_module
from earlyexit.tasks import task_build
from earlyexit.tasks.lm_eval_model import EarlyExitLM
from earlyexit.tasks.lm_eval_tasks import (
    PYTHIA_SUITE,
    TaskNotAvailableError,
    evaluate,
    resolve_tasks,
    task_identity,
)
from earlyexit.tasks.local_tasks import lm_eval_task_yaml

SHARED_EVAL = {
    "lambada_openai": "test",
    "piqa": "validation",
    "arc_easy": "validation",
    "sciq": "validation",
}


@pytest.fixture(autouse=True)
def offline(hf_offline, monkeypatch):
    """Nothing here may reach the hub; a fresh, empty datasets cache per test; no memoised resolution."""
    monkeypatch.setattr(tasks_module, "_memo", {})


@pytest.fixture(scope="module")
def lm():
    model, tokenizer = load_model("embedded")
    return EarlyExitLM(get_adapter(model), tokenizer, None, disable_tqdm=True)


def test_suite_tasks_are_found_where_lm_evals_own_index_finds_them():
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    folders = ["lambada", "piqa", "arc", "sciq", "hellaswag", "winogrande"]
    index = TaskManager(include_path=[tasks_dir / f for f in folders], include_defaults=False).task_index
    for name in PYTHIA_SUITE:
        assert lm_eval_task_yaml(name) == index[name].yaml_path, name


def test_unknown_task_is_named_with_close_matches():
    with pytest.raises(TaskNotAvailableError) as info:
        resolve_tasks(["hellaswg"])
    message = str(info.value)
    assert "unknown task 'hellaswg'" in message and "Did you mean hellaswag" in message
    assert "task.include_path" in message and "stdlib_lambada" in message
    with pytest.raises(ValueError, match="unknown task 'hellaswg'"):  # evaluate checks before using the model
        evaluate(None, ["hellaswg"])
    with pytest.raises(ValueError, match="no tasks given"):
        resolve_tasks([])


@pytest.mark.parametrize("name", PYTHIA_SUITE)
def test_a_local_variant_is_the_tasks_own_yaml_reading_local_files(name, tmp_path):
    data = write_suite(tmp_path / "data", [name])
    (resolved,) = resolve_tasks([name], data_dir=data)
    assert resolved.source == "data_dir" and resolved.split == SCORED[name]
    ours = load_yaml(_write(tmp_path, resolved.config), resolve_func=False)
    theirs = load_yaml(lm_eval_task_yaml(name), resolve_func=False)
    assert resolved.config["include"] == str(lm_eval_task_yaml(name))
    for key in (
        "doc_to_text",
        "doc_to_target",
        "doc_to_choice",
        "process_docs",
        "metric_list",
        "output_type",
    ):
        assert ours.get(key) == theirs.get(key), key
    (data_file,) = ours["dataset_kwargs"]["data_files"].values()
    assert Path(data_file).is_absolute() and Path(data_file).name == f"{name}_{SCORED[name]}.jsonl"
    assert ours["dataset_path"] == "json" and ours[f"{SCORED[name]}_split"] == SCORED[name]
    assert ours["training_split"] is None and ours["tag"] == []


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "yaml" / f"{config['task']}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_scored_split_falls_back_to_validation_with_a_note(tmp_path, caplog):
    data = write_suite(tmp_path, ["arc_easy"], split="validation")
    (resolved,) = resolve_tasks(["arc_easy"], data_dir=data)
    assert resolved.split == "validation" and resolved.config["test_split"] is None and resolved.fallback
    assert "VALIDATION" in resolved.note and "lm-eval scores test" in resolved.note
    write_jsonl(data / "arc_easy_test.jsonl", ROWS["arc_easy"])  # the scored split arrives
    (resolved,) = resolve_tasks(["arc_easy"], data_dir=data)
    assert resolved.split == "test" and "VALIDATION" not in resolved.note and not resolved.fallback


def test_parquet_files_are_read_too(tmp_path):
    import pandas as pd

    pd.DataFrame(ROWS["piqa"]).to_parquet(tmp_path / "piqa_validation.parquet")
    (resolved,) = resolve_tasks(["piqa"], data_dir=tmp_path)
    assert resolved.source == "data_dir" and resolved.config["dataset_path"] == "parquet"


def test_the_suite_runs_from_tiny_local_files_through_lm_eval(lm, tmp_path):
    data = write_suite(tmp_path)
    resolved = resolve_tasks(list(PYTHIA_SUITE), data_dir=data)
    results = evaluate(lm, resolved, limit=3, cache_dir=tmp_path)
    assert set(results) == set(PYTHIA_SUITE)
    for name, metrics in results.items():
        assert 0.0 <= metrics["acc"] <= 1.0, (name, metrics)
    # hellaswag's own process_docs ran on the raw columns: query, choices and gold are its output.
    hellaswag = next(t for t in resolved if t.name == "hellaswag")
    doc = task_build._build("hellaswag", hellaswag.config).eval_docs[0]
    assert doc["query"].startswith("Cooking: A man heats a pan.") and "[title]" not in doc["query"]
    assert doc["choices"][0] == "adds oil." and doc["gold"] == 0


@pytest.mark.skipif(
    shared_data_dir() is None
    or not all((shared_data_dir() / "eval" / f"{t}_{s}.jsonl").is_file() for t, s in SHARED_EVAL.items()),
    reason="../shared/data/eval with the lambada/piqa/arc_easy/sciq JSONL files is absent on this machine",
)
def test_the_shared_eval_files_are_the_default_data_dir(lm, tmp_path):
    resolved = resolve_tasks(list(SHARED_EVAL))  # no data_dir: ../shared/data/eval
    for task in resolved:
        assert task.source == "data_dir" and task.split == SHARED_EVAL[task.name], task
        assert Path(task.files[0]).parent == (shared_data_dir() / "eval").resolve()
    assert {t.name for t in resolved if "VALIDATION" in t.note} == {"arc_easy", "sciq"}
    results = evaluate(lm, resolved, limit=3, cache_dir=tmp_path)
    assert all(0.0 <= results[t]["acc"] <= 1.0 for t in SHARED_EVAL)


def test_the_datasets_cache_runs_the_standard_task_unchanged(lm, tmp_path):
    # A download leaves every split in the cache (lm-eval's piqa also reads train for few-shot docs).
    splits = {"train": ROWS["piqa"], "validation": ROWS["piqa"]}
    seed_datasets_cache(datasets.config.HF_DATASETS_CACHE, "baber/piqa", "default", splits)
    (cached,) = resolve_tasks(["piqa"], data_dir=tmp_path)  # an empty data_dir: the cache wins
    assert cached.source == "datasets_cache" and cached.split == "validation"
    assert cached.config == {"include": str(lm_eval_task_yaml("piqa")), "task": "piqa"}
    from_cache = evaluate(lm, [cached], limit=4, cache_dir=tmp_path)["piqa"]
    # The same rows as a local file score the same: same prompts, same metrics.
    (local,) = resolve_tasks(["piqa"], data_dir=write_suite(tmp_path / "data", ["piqa"]), offline=True)
    assert local.source == "datasets_cache"  # still the cache first ...
    tasks_module._memo.clear()
    datasets.config.HF_DATASETS_CACHE = tmp_path / "empty-cache"
    (local,) = resolve_tasks(["piqa"], data_dir=tmp_path / "data")
    assert local.source == "data_dir"  # ... and the file where the cache has nothing
    from_file = evaluate(lm, [local], limit=4, cache_dir=tmp_path)["piqa"]
    assert from_cache["acc"] == from_file["acc"] and from_cache["acc_norm"] == from_file["acc_norm"]


def test_include_path_registers_the_users_own_task_yamls(lm, tmp_path):
    rows = [{"q": "Is water wet?", "choices": ["yes", "no"], "answer": 0}] * 3
    data = write_jsonl(tmp_path / "mine" / "qa.jsonl", rows)
    (tmp_path / "mine" / "my_qa.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "my_qa",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "Q: {{q}}\nA:",
                "doc_to_target": "{{answer}}",
                "doc_to_choice": "{{choices}}",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
        )
    )
    resolved = resolve_tasks(["my_qa", "stdlib_lambada"], include_path=tmp_path / "mine")
    assert [(t.name, t.source) for t in resolved] == [("my_qa", "include_path"), ("stdlib_lambada", "stdlib")]
    results = evaluate(lm, resolved, limit=3, cache_dir=tmp_path)
    assert 0.0 <= results["my_qa"]["acc"] <= 1.0 and "acc" in results["stdlib_lambada"]


# ----------------------------------------------------------------------------- bad input


def test_a_missing_data_dir_or_include_path_is_named(tmp_path):
    with pytest.raises(
        TaskNotAvailableError, match=r"task.data_dir='.*absent' does not exist .*piqa_validation"
    ):
        resolve_tasks(["piqa"], data_dir=tmp_path / "absent")
    with pytest.raises(
        TaskNotAvailableError, match=r"task.include_path='.*nowhere' does not exist .*lm-eval task"
    ):
        resolve_tasks(["piqa"], include_path=tmp_path / "nowhere")


def test_a_local_file_whose_columns_do_not_fit_is_named(tmp_path):
    write_jsonl(tmp_path / "hellaswag_validation.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(TaskNotAvailableError) as info:
        resolve_tasks(["hellaswag"], data_dir=tmp_path)
    message = str(info.value)
    assert (
        "task.data_dir=" in message
        and "hellaswag_validation.jsonl does not fit lm-eval's task 'hellaswag'" in message
    )
    assert (
        "'ctx_a'" in message and "columns ['answer', 'question']" in message and "Rowan/hellaswag" in message
    )


def test_a_task_no_source_provides_names_what_was_looked_for_and_three_ways(tmp_path):
    write_suite(tmp_path, ["piqa"])
    with pytest.raises(TaskNotAvailableError) as info:
        resolve_tasks(["piqa", "winogrande"], data_dir=tmp_path)
    message = str(info.value)
    assert "task 'winogrande' cannot be run offline" in message
    assert (
        "allenai/winogrande, winogrande_xl" in message and str(datasets.config.HF_DATASETS_CACHE) in message
    )
    assert "winogrande_validation.jsonl, winogrande_validation.parquet" in message
    assert "load_dataset('allenai/winogrande', 'winogrande_xl')" in message  # runnable as printed
    assert (
        "(a)" in message
        and "(b)" in message
        and "task.data_dir=" in message
        and "task.include_path=" in message
    )


def test_resolution_is_reused_until_the_files_change(tmp_path, monkeypatch):
    data = write_suite(tmp_path / "data", ["piqa"])
    first = resolve_tasks(["piqa"], data_dir=data)
    monkeypatch.setattr(task_build, "_build", lambda *a: pytest.fail("resolved again"))
    assert resolve_tasks(["piqa"], data_dir=data) == first
    write_jsonl(data / "piqa_validation.jsonl", ROWS["piqa"][:2])
    with pytest.raises(pytest.fail.Exception, match="resolved again"):
        resolve_tasks(["piqa"], data_dir=data)


def test_accuracy_cache_identity_follows_the_data_not_its_name(tmp_path):
    data = write_suite(tmp_path / "a", ["piqa"])
    first = task_identity(resolve_tasks(["piqa"], data_dir=data))
    moved = write_suite(tmp_path / "b", ["piqa"])  # same text elsewhere: same identity
    assert task_identity(resolve_tasks(["piqa"], data_dir=moved)) == first
    write_jsonl(data / "piqa_validation.jsonl", ROWS["piqa"][:2])  # other text, same path: new identity
    assert task_identity(resolve_tasks(["piqa"], data_dir=data)) != first
    assert first[0]["source"] == "data_dir" and len(first[0]["data"][0]) == 64  # a SHA-256 of the file


def test_evaluate_reports_the_standard_error_of_mean_metrics(lm, tmp_path):
    """lm-eval's mean_stderr formula from the per-document scores; none for perplexity."""
    data = write_suite(tmp_path, ["piqa", "lambada_openai"])
    tasks = resolve_tasks(["piqa", "lambada_openai"], data_dir=data)
    scores = evaluate(lm, tasks, limit=4, cache_dir=tmp_path)
    p, n = scores["piqa"]["acc"], len(ROWS["piqa"][:4])
    assert scores["piqa"]["acc_stderr"] == pytest.approx((p * (1 - p) * n / (n - 1) / n) ** 0.5)
    assert "acc_stderr" in scores["lambada_openai"] and "perplexity_stderr" not in scores["lambada_openai"]
