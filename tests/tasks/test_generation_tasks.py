"""lm-eval generate_until tasks as workloads: lm-eval's own prompts (few-shot examples included),
stops and budgets, quality equal to what lm-eval reports for the same outputs, metrics that cannot
run offline skipped with a warning, log-likelihood tasks refused, and this project's LayerSkip
summarisation tasks (exact prompts, ROUGE as rouge_score computes it)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import datasets
import lm_eval
import pytest
import yaml
from eval_data import ROWS, SCORED, TRAIN_ROWS, write_jsonl, write_suite
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager
from rouge_score import rouge_scorer

from earlyexit.data.paths import shared_data_dir
from earlyexit.model.loading import load_model
from earlyexit.tasks import lm_eval_tasks as tasks_module
from earlyexit.tasks.generation_tasks import lm_eval_workload, task_domain
from earlyexit.tasks.lm_eval_tasks import TaskNotAvailableError, resolve_tasks

SHARED_EVAL = shared_data_dir() / "eval" if shared_data_dir() is not None else None
NQ_UNTIL = ("\n", ".", ",")


@pytest.fixture(autouse=True)
def offline(hf_offline, monkeypatch):
    """Nothing here may reach the hub; a fresh, empty datasets cache per test; no memoised resolution."""
    monkeypatch.setattr(tasks_module, "_memo", {})
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("embedded")[1]


def _data(tmp_path: Path, *tasks: str, train: bool = False) -> Path:
    folder = write_suite(tmp_path / "data", tasks)
    for task in tasks if train else ():
        write_jsonl(folder / f"{task}_train.jsonl", TRAIN_ROWS[task])
    return folder


def _context(prompt) -> str:
    return prompt.reference[1].args[0]


def _eos(tokenizer) -> str:
    return tokenizer.decode([tokenizer.eos_token_id])


class FixedLM(LM):
    """An lm-eval model whose generations are given: the text for each request's context."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self.answers[req.args[0]] for req in requests]  # a context we did not build: KeyError

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def _lm_eval_results(resolved, answers: dict[str, str], limit: int | None, seed: int) -> dict:
    """What lm_eval.simple_evaluate reports for the task (same config) when the model says ``answers``."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, f"{resolved.name}.yaml").write_text(yaml.safe_dump(resolved.config, sort_keys=False))
        manager = TaskManager(include_path=[folder], include_defaults=False)
        out = lm_eval.simple_evaluate(
            model=FixedLM(answers),
            tasks=[resolved.name],
            task_manager=manager,
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
            fewshot_random_seed=seed,
        )
    return out["results"][resolved.name]


# ----------------------------------------------------------------------------- prompts


def _check_nq_open(workload, tokenizer, questions: list[str], limit: int) -> None:
    assert len(workload.prompts) == limit
    assert workload.domain == "English questions" and workload.metrics == ("exact_match,remove_whitespace",)
    assert workload.higher_is_better == {"exact_match,remove_whitespace": True}
    for prompt, question in zip(workload.prompts, questions, strict=False):
        text = f"Answer these questions:\n\nQ: {question}?\nA:"  # description + doc_to_text, 0-shot
        assert _context(prompt) == text and prompt.ids == tuple(tokenizer(text).input_ids)
        assert prompt.stop.strings == (*NQ_UNTIL, _eos(tokenizer))  # the task's until + EOS, as lm-eval
        assert prompt.max_new_tokens == 256  # nq_open sets no max_gen_toks: lm-eval's default


@pytest.mark.skipif(
    SHARED_EVAL is None or not (SHARED_EVAL / "nq_open_validation.jsonl").is_file(),
    reason="../shared/data/eval/nq_open_validation.jsonl is absent on this machine",
)
def test_nq_open_from_the_shared_files(tokenizer):
    (resolved,) = resolve_tasks(["nq_open"])  # no data_dir: ../shared/data/eval
    assert resolved.source == "data_dir" and resolved.split == "validation"
    workload = lm_eval_workload(resolved, tokenizer, limit=5, max_length=1024)
    docs = datasets.load_dataset("json", data_files=str(SHARED_EVAL / "nq_open_validation.jsonl"))["train"]
    _check_nq_open(workload, tokenizer, docs["question"][:5], 5)
    assert workload.source == "data_dir" and workload.name == "nq_open"


def test_nq_open_from_tiny_rows(tokenizer, tmp_path):
    (resolved,) = resolve_tasks(["nq_open"], data_dir=_data(tmp_path, "nq_open"))
    workload = lm_eval_workload(resolved, tokenizer, limit=2, max_length=1024)
    _check_nq_open(workload, tokenizer, [r["question"] for r in ROWS["nq_open"]], 2)
    assert workload.prompts[0].reference[0]["answer"] == ["Paris"]  # the lm-eval doc rides along


def test_gsm8k_prompts_carry_its_five_shots_from_the_train_file(tokenizer, tmp_path):
    (resolved,) = resolve_tasks(["gsm8k"], data_dir=_data(tmp_path, "gsm8k", train=True))
    assert resolved.split == "test" and resolved.config["fewshot_split"] == "train"
    workload = lm_eval_workload(resolved, tokenizer, limit=None, max_length=2048)
    assert len(workload.prompts) == len(ROWS["gsm8k"]) and "5-shot" in workload.note
    train = {f"Question: {r['question']}\nAnswer: {r['answer']}" for r in TRAIN_ROWS["gsm8k"]}
    for prompt, doc in zip(workload.prompts, ROWS["gsm8k"], strict=True):
        *shots, question = _context(prompt).split("\n\n")
        assert len(shots) == 5 and set(shots) <= train  # gsm8k's own few-shot format, from train
        assert question == f"Question: {doc['question']}\nAnswer:"
        assert prompt.stop.strings == ("Question:", "</s>", "<|im_end|>", _eos(tokenizer))
    assert workload.domain == "math word problems"
    assert workload.metrics == ("exact_match,strict-match", "exact_match,flexible-extract")


def test_a_few_shot_task_without_its_train_file_is_refused(tmp_path):
    with pytest.raises(TaskNotAvailableError) as info:
        resolve_tasks(["gsm8k"], data_dir=_data(tmp_path, "gsm8k"))
    message = str(info.value)
    assert "task 'gsm8k' is 5-shot" in message and "gsm8k_train.jsonl" in message
    assert "No examples are drawn from the scored split" in message


def test_prompts_are_cut_from_the_left_to_leave_room_for_the_budget(tokenizer, tmp_path):
    (resolved,) = resolve_tasks(["nq_open"], data_dir=_data(tmp_path, "nq_open"))
    workload = lm_eval_workload(resolved, tokenizer, limit=3, max_length=256 + 5)
    for prompt in workload.prompts:
        assert prompt.ids == tuple(tokenizer(_context(prompt)).input_ids[-5:])
    assert "3 of 3 prompts cut from the left" in workload.note


# ----------------------------------------------------------------------------- quality = lm-eval's

QUALITY_CASES = {  # task: (texts the model "generated", one per document; needs a train file)
    "nq_open": ([" Paris", " the shakespeare", " seven"], False),
    "gsm8k": ([" 3+4=7\n#### 7", " so 6*3 is 18.", " I think 9."], True),
    "cnn_dm_layerskip": ([" Council votes for a new bridge .", " A storm hits the coast ."], True),
}


@pytest.mark.parametrize("name", list(QUALITY_CASES))
def test_quality_equals_what_lm_eval_reports_for_the_same_outputs(name, tokenizer, tmp_path):
    texts, train = QUALITY_CASES[name]
    (resolved,) = resolve_tasks([name], data_dir=_data(tmp_path, name, train=train))
    workload = lm_eval_workload(resolved, tokenizer, limit=len(texts), max_length=2048, seed=0)
    scores = workload.score(texts)
    answers = {_context(p): t for p, t in zip(workload.prompts, texts, strict=True)}
    theirs = _lm_eval_results(resolved, answers, limit=len(texts), seed=0)
    assert scores.aggregate and set(scores.aggregate) == set(workload.metrics)
    for metric, value in scores.aggregate.items():
        assert value == theirs[metric], (metric, value, theirs)
    assert any(v > 0 for v in scores.aggregate.values())  # not a vacuous 0 == 0


# ----------------------------------------------------------------------------- refused, skipped


def test_a_loglikelihood_task_is_refused(tokenizer, tmp_path):
    (resolved,) = resolve_tasks(["piqa"], data_dir=_data(tmp_path, "piqa"))
    with pytest.raises(ValueError) as info:
        lm_eval_workload(resolved, tokenizer, limit=2, max_length=1024)
    message = str(info.value)
    assert "task 'piqa'" in message and "'multiple_choice'" in message
    assert "log-likelihood tasks show no speedup" in message and "task.names" in message


def test_humaneval_without_the_opt_in_has_no_metric_and_says_why(tokenizer, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        (resolved,) = resolve_tasks(["humaneval"], data_dir=_data(tmp_path, "humaneval"))
    assert resolved.source == "data_dir" and resolved.skipped_metrics == ("pass_at_k",)
    assert "metric pass_at_k skipped" in caplog.text
    workload = lm_eval_workload(resolved, tokenizer, limit=None, max_length=2048)
    assert workload.metrics == () and workload.scorer is None and workload.domain == "Python code"
    assert "code execution not enabled (HF_ALLOW_CODE_EVAL=1" in workload.note
    assert "speed and acceptance only" in workload.note
    (prompt,) = workload.prompts
    assert _context(prompt) == ROWS["humaneval"][0]["prompt"] and prompt.max_new_tokens == 1024
    assert prompt.stop.strings[:2] == ("\nclass", "\ndef")
    assert workload.score(["    return a + b\n"]).aggregate == {}


def test_humaneval_with_the_opt_in_still_skips_a_metric_that_cannot_load_offline(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    with caplog.at_level(logging.WARNING):
        (resolved,) = resolve_tasks(
            ["humaneval"], data_dir=_data(tmp_path, "humaneval"), confirm_run_unsafe_code=True
        )
    assert resolved.skipped_metrics == ("pass_at_k",) and "code_eval" in resolved.note
    assert "metric pass_at_k skipped: its code cannot be loaded here" in caplog.text


@pytest.mark.skipif(
    SHARED_EVAL is None or not (SHARED_EVAL / "humaneval_test.jsonl").is_file(),
    reason="../shared/data/eval/humaneval_test.jsonl is absent on this machine",
)
def test_humaneval_resolves_offline_from_the_shared_files_with_its_document_check(monkeypatch):
    checked = []
    real = tasks_module.check_documents
    monkeypatch.setattr(tasks_module, "check_documents", lambda t, n, *a: checked.append(n) or real(t, n, *a))
    (resolved,) = resolve_tasks(["humaneval"], offline=True)
    assert resolved.source == "data_dir" and Path(resolved.files[0]).name == "humaneval_test.jsonl"
    assert checked == ["humaneval"] and resolved.skipped_metrics == ("pass_at_k",)


def _user_task(folder: Path, rows: list[dict], metrics: list[dict], utils: str | None = None) -> Path:
    data = write_jsonl(folder / "qa.jsonl", rows)
    if utils is not None:
        (folder / "utils.py").write_text(utils)
    config = {
        "task": "my_gen",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "Q: {{q}}\nA:",
        "doc_to_target": "{{a}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8},
    }
    text = yaml.safe_dump(config) + "metric_list:\n" + "".join(metrics_yaml for metrics_yaml in metrics)
    (folder / "my_gen.yaml").write_text(text)
    return folder


EXACT = "  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
ROWS_QA = [{"q": "Is water wet?", "a": "yes"}, {"q": "Is fire cold?", "a": "no"}]


def test_a_hub_only_metric_is_skipped_offline_with_a_warning_naming_it(tokenizer, tmp_path, caplog):
    bertscore = (
        "  - metric: bertscore\n    hf_evaluate: true\n    aggregation: mean\n    higher_is_better: true\n"
    )
    folder = _user_task(tmp_path / "mine", ROWS_QA, [EXACT, bertscore])
    with caplog.at_level(logging.WARNING):
        (resolved,) = resolve_tasks(["my_gen"], include_path=folder, offline=True)
    assert resolved.skipped_metrics == ("bertscore",) and "metric bertscore skipped" in resolved.note
    assert "metric bertscore skipped" in caplog.text
    workload = lm_eval_workload(resolved, tokenizer, limit=None, max_length=64)
    assert workload.metrics == ("exact_match,none",) and "bertscore" in workload.note
    assert workload.score(["yes", "maybe"]).aggregate == {"exact_match,none": 0.5}


def test_a_metric_whose_code_cannot_be_imported_is_skipped(tokenizer, tmp_path, caplog):
    broken = (
        "raise ImportError('needs a package this machine lacks')\n\ndef my_metric(references, predictions):\n"
    )
    broken += "    return 1.0\n"
    mine = "  - metric: !function utils.my_metric\n    aggregation: mean\n    higher_is_better: true\n"
    folder = _user_task(tmp_path / "mine", ROWS_QA, [EXACT, mine], utils=broken)
    with caplog.at_level(logging.WARNING):
        (resolved,) = resolve_tasks(["my_gen"], include_path=folder, offline=True)
    assert resolved.skipped_metrics == ("my_metric",)
    assert (
        "metric my_metric skipped: its code cannot be loaded here (ImportError: needs a package"
        in caplog.text
    )
    workload = lm_eval_workload(resolved, tokenizer, limit=None, max_length=64)
    assert workload.metrics == ("exact_match,none",)


def test_a_metric_that_fails_when_it_computes_is_skipped(tokenizer, tmp_path, caplog):
    # As BERTScore does offline when bert_score is installed: it loads, then cannot fetch its model.
    utils = "def needs_a_model(references, predictions):\n    raise OSError('no model offline')\n"
    mine = "  - metric: !function utils.needs_a_model\n    aggregation: mean\n    higher_is_better: true\n"
    folder = _user_task(tmp_path / "mine", ROWS_QA, [EXACT, mine], utils=utils)
    with caplog.at_level(logging.WARNING):
        (resolved,) = resolve_tasks(["my_gen"], include_path=folder, offline=True)
    assert resolved.skipped_metrics == ("needs_a_model",)
    assert "fails on a probe document (OSError: no model offline)" in caplog.text
    workload = lm_eval_workload(resolved, tokenizer, limit=None, max_length=64)
    assert workload.metrics == ("exact_match,none",)
    assert workload.score(["yes", "no"]).aggregate == {"exact_match,none": 1.0}


# ----------------------------------------------------------------------------- LayerSkip summarisation


def test_cnn_dm_layerskip_is_one_shot_in_layerskips_format_with_its_shot_rule(tokenizer, tmp_path):
    (resolved,) = resolve_tasks(
        ["cnn_dm_layerskip"], data_dir=_data(tmp_path, "cnn_dm_layerskip", train=True)
    )
    assert resolved.source == "data_dir" and resolved.split == "test"
    workload = lm_eval_workload(resolved, tokenizer, limit=None, max_length=2048)
    shot = datasets.Dataset.from_list(TRAIN_ROWS["cnn_dm_layerskip"]).shuffle(seed=42)[0]  # LayerSkip's rule
    head = f"Article: {shot['article']}\nSummary: {shot['highlights'].replace(chr(10), '')}\n\n"
    for prompt, doc in zip(workload.prompts, ROWS["cnn_dm_layerskip"], strict=True):
        text = f"{head}Article: {doc['article']}\nSummary:"
        assert _context(prompt) == text and prompt.ids == tuple(tokenizer(text).input_ids)
        assert prompt.max_new_tokens == 512 and prompt.stop.strings == (_eos(tokenizer),)
    assert workload.domain == "news articles" and workload.metrics == ("rouge2,none", "rougeL,none")
    assert "1-shot" in workload.note


def test_xsum_layerskip_is_zero_shot(tokenizer, tmp_path):
    (resolved,) = resolve_tasks(["xsum_layerskip"], data_dir=_data(tmp_path, "xsum_layerskip"))
    workload = lm_eval_workload(resolved, tokenizer, limit=None, max_length=2048)
    for prompt, doc in zip(workload.prompts, ROWS["xsum_layerskip"], strict=True):
        assert _context(prompt) == f"Article: {doc['document']}\nSummary:"
        assert prompt.max_new_tokens == 512 and prompt.stop.strings == (_eos(tokenizer),)
    assert "shot" not in workload.note


def test_layerskip_rouge_is_rouge_scores_f_measure_per_document(tokenizer, tmp_path):
    (resolved,) = resolve_tasks(["xsum_layerskip"], data_dir=_data(tmp_path, "xsum_layerskip"))
    workload = lm_eval_workload(resolved, tokenizer, limit=None, max_length=2048)
    texts = [" Heavy rain fell in the north.", " The team lost the final."]
    scores = workload.score(texts)
    scorer = rouge_scorer.RougeScorer(["rouge2", "rougeL"])
    for i, (doc, text) in enumerate(zip(ROWS["xsum_layerskip"], texts, strict=True)):
        expected = scorer.score(doc["summary"], text)
        assert scores.per_prompt["rouge2,none"][i] == expected["rouge2"].fmeasure
        assert scores.per_prompt["rougeL,none"][i] == expected["rougeL"].fmeasure
    assert scores.aggregate["rougeL,none"] == sum(scores.per_prompt["rougeL,none"]) / 2
    assert workload.higher_is_better == {"rouge2,none": True, "rougeL,none": True}


def test_the_project_tasks_register_like_lm_evals(tmp_path):
    with pytest.raises(TaskNotAvailableError) as info:
        resolve_tasks(["cnn_dm_layerskp"])
    message = str(info.value)
    assert "Did you mean cnn_dm_layerskip" in message and "cnn_dm_layerskip, xsum_layerskip" in message
    with pytest.raises(TaskNotAvailableError, match="xsum_layerskip_test.jsonl"):  # offline, no data
        resolve_tasks(["xsum_layerskip"], data_dir=tmp_path)
    (online,) = resolve_tasks(["xsum_layerskip"], offline=False)  # online: the hub dataset, unbuilt
    assert online.source == "hub" and online.split == SCORED["xsum_layerskip"]
    assert online.config == {"include": online.yaml, "task": "xsum_layerskip"}


def test_domains_fall_back_to_a_generic_phrase():
    assert task_domain("humaneval_plus") == "Python code" and task_domain("gsm8k_cot") == "math word problems"
    assert task_domain("some_new_task") == "text"


def test_a_budget_cap_leaves_room_for_long_budgets_and_is_noted(tokenizer, tmp_path):
    """humaneval's 1024-token budget fills a 1024-token context; bench.gen_cap makes room for it."""
    (task,) = resolve_tasks(["humaneval"], data_dir=_data(tmp_path, "humaneval"))
    with pytest.raises(ValueError, match="max_gen_toks=1024 leaves no room for a prompt"):
        lm_eval_workload(task, tokenizer, None, 1024)
    wl = lm_eval_workload(task, tokenizer, None, 1024, gen_cap=32)
    assert [p.max_new_tokens for p in wl.prompts] == [32]
    assert "max new tokens capped at 32 (bench.gen_cap)" in wl.note


def test_a_limit_beyond_the_task_keeps_every_prompt_and_says_so(tokenizer, tmp_path, caplog):
    import torch

    from earlyexit.tasks.workloads import build_workloads

    data = _data(tmp_path, "nq_open")
    have = len(ROWS["nq_open"])
    with caplog.at_level(logging.WARNING):
        (wl,) = build_workloads(
            ["nq_open"], tokenizer, torch.arange(100), limit=have + 5, prompt_len=8, max_new_tokens=8,
            max_length=512, task={"data_dir": str(data), "offline": True},
        )  # fmt: skip
    assert len(wl.prompts) == have
    assert f"workload nq_open has {have} prompts, fewer than bench.limit={have + 5}: all kept" in caplog.text
