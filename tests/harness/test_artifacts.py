"""Cache keys identify data by its content and models by what they are, never by a name or a path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, tiny_gpt_neox
from hydra import compose, initialize_config_dir

from earlyexit.data.streams import text_fingerprint
from earlyexit.exits.heads import HeadSpec
from earlyexit.exits.train import TrainConfig
from earlyexit.harness import artifacts
from earlyexit.model.adapter import get_adapter

CONF = Path(__file__).resolve().parents[2] / "conf"
TCFG = TrainConfig(steps=2, batch_size=2, seq_len=16, warmup=1)


def test_text_fingerprint_follows_the_content_not_the_path(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("hello world")
    b = tmp_path / "elsewhere" / "b.txt"
    b.parent.mkdir()
    b.write_text("hello world")
    assert text_fingerprint(str(a)) == text_fingerprint(str(b))
    a.write_text("hello there")
    assert text_fingerprint(str(a)) != text_fingerprint(str(b))
    # A folder: its files' relative names and bytes (they decide the documents and their order).
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "x.txt").write_text("one")
    shutil.copytree(tmp_path / "d1", tmp_path / "d2")
    assert text_fingerprint(str(tmp_path / "d1")) == text_fingerprint(str(tmp_path / "d2"))
    (tmp_path / "d2" / "y.md").write_text("two")
    assert text_fingerprint(str(tmp_path / "d1")) != text_fingerprint(str(tmp_path / "d2"))
    assert text_fingerprint("org/some-dataset") == "dataset:org/some-dataset"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        text_fingerprint(str(tmp_path / "missing.txt"))


def test_heads_are_retrained_when_the_text_under_the_same_path_changes(tmp_path, monkeypatch):
    adapter = get_adapter(tiny_gpt_neox(seed=0).float())
    spec = HeadSpec("linear", (1, 3))
    trained = []
    real = artifacts.train_heads
    monkeypatch.setattr(artifacts, "train_heads", lambda *a, **k: trained.append(1) or real(*a, **k))
    stream = torch.randint(0, 97, (200,), generator=torch.Generator().manual_seed(0))
    model = {"weights": "w"}

    def heads_for(path: Path) -> str:
        data = {"text": text_fingerprint(str(path)), "heldout_fraction": 0.1}
        return artifacts.prepare_heads(adapter, spec, TCFG, data, stream, tmp_path / "cache", model)[1]

    text = tmp_path / "corpus.txt"
    text.write_text("def f(x):\n    return x\n" * 50)
    first = heads_for(text)
    assert heads_for(text) == first and len(trained) == 1  # same text: cached, not retrained
    copy = tmp_path / "copy" / "renamed.txt"
    copy.parent.mkdir()
    shutil.copy(text, copy)
    assert heads_for(copy) == first and len(trained) == 1  # same text elsewhere: the same heads
    text.write_text("class A:\n    pass\n" * 50)
    assert heads_for(text) != first and len(trained) == 2  # new text under the same path: retrained
    # The model's identity is part of the key too.
    data = {"text": text_fingerprint(str(text)), "heldout_fraction": 0.1}
    other = artifacts.prepare_heads(adapter, spec, TCFG, data, stream, tmp_path / "cache", {"weights": "v"})[
        1
    ]
    assert other not in (first, heads_for(text)) and len(trained) == 3


def test_the_runner_keys_heads_by_the_texts_content_and_the_models_weights(tmp_path, monkeypatch):
    """What `run` hands to the heads cache: content identities, not the source's path or the model's name."""
    from earlyexit.harness import runner

    seen = []

    class Stop(Exception):
        pass

    def capture(adapter, spec, tcfg, data, stream, cache_dir, model, about):
        seen.append((data, model, about))
        raise Stop

    monkeypatch.setattr(runner, "prepare_heads", capture)
    text = tmp_path / "corpus.py"
    source = Path(shutil.__file__).read_text()  # a stdlib module: the embedded model's own domain
    text.write_text(source)
    overrides = [*TINY_RUN, f"data.source={text}", f"cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    expected = []
    for content in (source, source[::-1]):  # same path, other text
        text.write_text(content)
        expected.append(text_fingerprint(str(text)))
        with pytest.raises(Stop):
            runner.run(cfg)
    (first, model, about), (second, model_again, _) = seen
    assert [first["text"], second["text"]] == expected and expected[0] != expected[1]
    assert str(text) not in str(first) and about["source"] == str(text)  # the path is context only
    assert model == model_again and set(model) == {"weights"} and len(model["weights"]) == 64
