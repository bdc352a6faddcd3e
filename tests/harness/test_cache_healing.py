"""An unreadable cached artifact is moved aside with a warning and made again, for every kind the
cache holds: heads, training checkpoints, JSON results, token streams and generated task data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt_neox

from earlyexit.exits.heads import HeadSpec
from earlyexit.exits.train import TrainConfig
from earlyexit.harness import artifacts
from earlyexit.model.adapter import get_adapter
from earlyexit.model.loading import load_model
from earlyexit.tasks.local_tasks import lm_eval_task_yaml
from earlyexit.tasks.stdlib_task import stdlib_task_config

TCFG = TrainConfig(steps=2, batch_size=2, seq_len=16, warmup=1)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def moved_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt*"))


@pytest.fixture
def counted_training(monkeypatch):
    trained = []
    real = artifacts.train_heads
    monkeypatch.setattr(artifacts, "train_heads", lambda *a, **k: trained.append(1) or real(*a, **k))
    return trained


def prepare(tmp_path: Path):
    adapter = get_adapter(tiny_gpt_neox(seed=0).float())
    stream = torch.randint(0, 97, (200,), generator=torch.Generator().manual_seed(0))
    data = {"text": "t", "heldout_fraction": 0.1}
    return artifacts.prepare_heads(
        adapter, HeadSpec("linear", (1, 3)), TCFG, data, stream, tmp_path, {"w": 1}
    )


def test_truncated_heads_are_moved_aside_and_trained_again(tmp_path, counted_training, caplog):
    _, key = prepare(tmp_path)
    path = tmp_path / "heads" / f"{key}.safetensors"
    truncate(path)
    with caplog.at_level(logging.WARNING):
        heads, again = prepare(tmp_path)
    assert again == key and len(counted_training) == 2
    assert len(moved_aside(path)) == 1 and "is unreadable" in caplog.text and str(path) in caplog.text
    prepare(tmp_path)
    assert len(counted_training) == 2  # the new file is read back


def test_an_unreadable_training_checkpoint_is_moved_aside_not_resumed(tmp_path, counted_training):
    key = artifacts.artifact_key(
        model={"w": 1},
        spec=HeadSpec("linear", (1, 3)),
        train=TCFG,
        data={"text": "t", "heldout_fraction": 0.1},
    )
    ckpt = tmp_path / "heads" / f"{key}.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"trunc')
    _, got = prepare(tmp_path)
    assert got == key and len(counted_training) == 1
    assert len(moved_aside(ckpt)) == 1 and not ckpt.exists()
    assert (tmp_path / "heads" / f"{key}.safetensors").is_file()


@pytest.mark.parametrize("damage", ["truncated", "not an object", "binary"])
def test_invalid_json_results_are_computed_again(tmp_path, caplog, damage):
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"thresholds": [0.5, 0.25], "n": len(calls)}

    identity = {"what": "calibration"}
    assert artifacts.cached_json(tmp_path, "calibration", identity, compute)["n"] == 1
    path = tmp_path / "calibration" / f"{artifacts.artifact_key(**identity)}.result.json"
    if damage == "truncated":
        truncate(path)
    elif damage == "not an object":
        path.write_text("[1, 2]")
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.WARNING):
        assert artifacts.cached_json(tmp_path, "calibration", identity, compute)["n"] == 2
    assert len(moved_aside(path)) == 1 and "moved aside" in caplog.text
    assert artifacts.cached_json(tmp_path, "calibration", identity, compute)["n"] == 2


def test_truncated_token_streams_are_tokenised_again(tmp_path):
    _, tokenizer = load_model("embedded")
    text = tmp_path / "text.py"
    text.write_text("def f(x):\n    return x + 1\n" * 40)
    first = artifacts.cached_token_streams(tokenizer, str(text), 0.1, tmp_path / "cache")
    (path,) = (tmp_path / "cache" / "tokens").glob("*.safetensors")
    truncate(path, 0.3)
    again = artifacts.cached_token_streams(tokenizer, str(text), 0.1, tmp_path / "cache")
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert len(moved_aside(path)) == 1


def test_cut_short_stdlib_task_data_is_written_again(tmp_path, caplog):
    lambada = lm_eval_task_yaml("lambada_openai")
    config = stdlib_task_config(tmp_path, lambada)
    path = Path(config["dataset_kwargs"]["data_files"]["test"])
    rows = path.read_text().splitlines()
    truncate(path, 0.5)
    with caplog.at_level(logging.WARNING):
        stdlib_task_config(tmp_path, lambada)
    assert path.read_text().splitlines() == rows and "moved aside" in caplog.text
    assert all({"context", "target"} <= set(json.loads(r)) for r in rows)


def test_an_unreadable_shipped_artifact_asks_for_a_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "SHIPPED_DIR", tmp_path / "shipped")
    bad = tmp_path / "shipped" / "x.result.json"
    bad.parent.mkdir()
    bad.write_text("{")
    with pytest.raises(RuntimeError, match=r"shipped artifact .*x.result.json is unreadable .*reinstall"):
        artifacts.read_or_quarantine(bad, artifacts._read_json_object)
    assert bad.exists()  # never moved: it belongs to the package
