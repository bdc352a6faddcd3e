"""The design card's command, as a user runs it on an offline machine:

    HF_HUB_OFFLINE=1 python run.py -m model=pythia-410m metric=entropy

with the model in a local Hugging Face cache (here a Pythia-architecture model shrunk to 6 layers of
width 64 with random weights, the real Pythia tokenizer, vocabulary padded to 50304 as Pythia's is),
its training text (wikitext-103) in the `datasets` cache, and the Pythia suite from local files via
task.data_dir. Only overrides that shrink the work are added.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_data import write_suite
from hub_cache import save_hub_model, seed_datasets_cache
from transformers import GPTNeoXForCausalLM

from earlyexit.data.paths import shared_data_dir
from earlyexit.harness.results import ResultStore
from earlyexit.model.loading import pythia_config, shared_pythia_tokenizer
from earlyexit.tasks.lm_eval_tasks import PYTHIA_SUITE

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHRINK = [  # less work, same stages
    "train.steps=3",
    "train.batch_size=2",
    "train.seq_len=64",
    "train.warmup=1",
    "calibration.max_tokens=256",
    "bench.prompts=1",
    "bench.prompt_len=8",
    "bench.max_new_tokens=4",
    "bench.repeats=1",
    "bench.warmup=0",
    "task=pythia-suite",
    "task.limit=2",
]


def _wikitext_rows() -> list[dict]:
    shared = shared_data_dir()
    path = shared / "corpora" / "wikitext-2-valid.txt" if shared is not None else None
    if path is not None and path.is_file():
        lines = path.read_text().splitlines()[:400]
    else:
        lines = [
            f" = Section {i} = \n The quick brown fox jumps over the lazy dog {i} times ." for i in range(400)
        ]
    return [{"text": line + "\n"} for line in lines]


@pytest.mark.skipif(
    shared_data_dir() is None or not (shared_data_dir() / "tokenizers" / "gpt-neox-20b.json").is_file(),
    reason="needs the real Pythia tokenizer, ../shared/data/tokenizers/gpt-neox-20b.json (absent here)",
)
def test_the_design_card_command_runs_offline_end_to_end(tmp_path):
    hf_home = tmp_path / "hf"
    torch.manual_seed(0)
    config = pythia_config("410m", num_hidden_layers=6, hidden_size=64, num_attention_heads=4)
    model = GPTNeoXForCausalLM(config).to(torch.float16)  # released Pythia weights are float16
    tokenizer = shared_pythia_tokenizer()
    assert len(tokenizer) == 50277 and config.vocab_size == 50304
    save_hub_model(hf_home / "hub", "EleutherAI/pythia-410m", model, tokenizer, COMMIT)
    rows = _wikitext_rows()
    seed_datasets_cache(hf_home / "datasets", "Salesforce/wikitext", "wikitext-103-raw-v1", {"train": rows})
    # The suite: the real files from ../shared/data/eval where present, tiny ones for the rest.
    data = tmp_path / "eval"
    data.mkdir()
    shared_eval = shared_data_dir() / "eval"
    present = {p.name.split("_validation")[0].split("_test")[0] for p in shared_eval.glob("*.jsonl")}
    for path in shared_eval.glob("*.jsonl"):
        (data / path.name).symlink_to(path)
    write_suite(data, [t for t in PYTHIA_SUITE if t not in present])

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "model=pythia-410m",
        "metric=entropy",
        *SHRINK,
        f"task.data_dir={data}",
        f"results.path={tmp_path / 'records.jsonl'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (record,) = ResultStore(tmp_path / "records.jsonl").load(unknown="keep").to_dict("records")
    assert record["status"] == "ok", record.get("error")
    assert record["config.model.name"] == "pythia-410m" and record["config.metric.name"] == "entropy"
    # device=auto and model.dtype=auto, resolved on this CPU machine and recorded.
    assert (record["config.device"], record["config.model.dtype"]) == ("cpu", "float32")
    assert (record["env.device"], record["env.dtype"]) == ("cpu", "float32")
    assert (record["env.device_requested"], record["env.dtype_requested"]) == ("auto", "auto")
    assert record["metric.model_fingerprint"] == f"EleutherAI/pythia-410m@{COMMIT}"
    for task in PYTHIA_SUITE:
        assert 0.0 <= record[f"metric.acc_full.{task}.acc"] <= 1.0, task
        assert record[f"metric.task_source.{task}"] == "data_dir", task
    assert record["metric.task_split.arc_easy"] in ("test", "validation")
    assert record["metric.speedup"] > 0 and record["metric.outputs_equal_full"]
