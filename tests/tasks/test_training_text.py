"""The heads' training text is resolved before any model loads, offline too, and an unavailable
one is named with the ways to provide it (the Pythia configs train on a hub dataset)."""

from __future__ import annotations

import json

import pytest
from hub_cache import seed_datasets_cache
from hydra import compose, initialize_config_dir

from earlyexit.harness import runner
from earlyexit.tasks import offline as offline_module
from earlyexit.tasks.training_text import TextSourceNotAvailableError, resolve_text_source

WIKITEXT = "Salesforce/wikitext:wikitext-103-raw-v1"


@pytest.fixture
def offline(hf_offline):
    return hf_offline


def test_local_text_and_the_stdlib_need_no_network(tmp_path, offline):
    (tmp_path / "a.txt").write_text("some text\n")
    assert resolve_text_source("stdlib") == "stdlib"
    assert resolve_text_source(str(tmp_path / "a.txt")) == "file"
    assert resolve_text_source(str(tmp_path)) == "folder"


def test_bad_local_sources_are_named(tmp_path):
    with pytest.raises(TextSourceNotAvailableError, match=r"data.source='/nowhere/text.txt' does not exist"):
        resolve_text_source("/nowhere/text.txt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(TextSourceNotAvailableError, match=r"is a folder with no text files \(.json, .jsonl"):
        resolve_text_source(str(tmp_path / "empty"))


def test_a_hub_dataset_missing_offline_names_three_ways(offline, tmp_path):
    with pytest.raises(TextSourceNotAvailableError) as info:
        resolve_text_source(WIKITEXT, cache_dir=tmp_path / "artifacts")
    message = str(info.value)
    assert f"data.source='{WIKITEXT}' (the text the heads train on) cannot be read offline" in message
    assert str(offline) in message  # the datasets cache that was looked in
    assert "load_dataset('Salesforce/wikitext', 'wikitext-103-raw-v1')" in message
    assert "data.source=" in message and "data.source=stdlib" in message


def test_a_hub_dataset_in_the_datasets_cache_is_used_offline(offline):
    rows = [{"text": f" = Section {i} = \n words words {i} .\n"} for i in range(20)]
    seed_datasets_cache(offline, "Salesforce/wikitext", "wikitext-103-raw-v1", {"train": rows})
    assert resolve_text_source(WIKITEXT) == "datasets_cache"


def test_token_streams_already_made_from_it_are_enough(offline, tmp_path):
    tokens = tmp_path / "artifacts" / "tokens"
    tokens.mkdir(parents=True)
    (tokens / "k.json").write_text(json.dumps({"text": f"dataset:{WIKITEXT}", "tokenizer": "t"}))
    (tokens / "k.safetensors").write_bytes(b"x")
    assert resolve_text_source(WIKITEXT, cache_dir=tmp_path / "artifacts") == "token_cache"


def test_online_a_hub_dataset_is_left_to_the_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(offline_module, "_probe", [None])  # the hub answered
    assert resolve_text_source(WIKITEXT) == "hub"


def test_an_offline_pythia_run_stops_before_the_model_loads(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with initialize_config_dir(config_dir=str(runner_conf()), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["model=pythia-70m", "task=none", f"cache_dir={tmp_path / 'c'}"]
        )
    with pytest.raises(TextSourceNotAvailableError, match="cannot be read offline"):
        runner.record_run(cfg)


def runner_conf():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "conf"
