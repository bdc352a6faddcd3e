"""Text sources and token streams."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from earlyexit.data.paths import shared_data_dir
from earlyexit.data.streams import contiguous_windows, load_documents, sample_windows, token_streams


class CharTokenizer:
    """Stands in for a tokenizer: one id per character, EOS = 0."""

    eos_token_id = 0
    name_or_path = "char"

    def __len__(self):
        return 201

    def __call__(self, text):
        return {"input_ids": [1 + ord(c) % 200 for c in text]}


def test_local_file_and_folder_sources(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("beta")
    (tmp_path / "skip.bin").write_text("no")
    assert load_documents(str(tmp_path / "a.txt")) == ["alpha"]
    assert load_documents(str(tmp_path)) == ["alpha", "beta"]


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_documents(str(tmp_path / "missing.txt"))


def test_stdlib_corpus_has_disjoint_train_and_heldout():
    train, heldout = load_documents("stdlib", "train"), load_documents("stdlib", "heldout")
    assert len(train) > 10 * len(heldout) > 0
    assert not set(heldout) & set(train[:200])


def test_streams_split_into_train_calibration_heldout(tmp_path):
    (tmp_path / "t.txt").write_text("x" * 1000)
    train, calib, held = token_streams(CharTokenizer(), str(tmp_path / "t.txt"), heldout_fraction=0.2)
    assert len(train) == 800 and len(calib) == 100 and len(held) == 101  # + EOS


def test_windows_are_reproducible_per_step():
    stream = torch.arange(1000)
    a = sample_windows(stream, 4, 16, seed=1, step=7)
    assert torch.equal(a, sample_windows(stream, 4, 16, seed=1, step=7))
    assert not torch.equal(a, sample_windows(stream, 4, 16, seed=1, step=8))
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(4, 15, dtype=torch.long))
    assert contiguous_windows(stream, 100, max_tokens=250).shape == (2, 100)


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data is not present beside the repository")
def test_shared_wikitext_streams_with_the_pythia_tokenizer():
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(shared_data_dir() / "tokenizers" / "gpt-neox-20b.json"), eos_token="<|endoftext|>"
    )
    train, calib, held = token_streams(tok, str(shared_data_dir() / "corpora" / "wikitext-2-valid.txt"))
    assert len(train) > 200_000 and len(calib) > 10_000 and len(held) > 10_000


def test_token_streams_are_cached_and_follow_the_text(tmp_path, monkeypatch):
    from earlyexit.harness import artifacts

    text = tmp_path / "t.txt"
    text.write_text("abc" * 300)
    calls = []
    real = artifacts.token_streams
    monkeypatch.setattr(artifacts, "token_streams", lambda *a: calls.append(a) or real(*a))
    first = artifacts.cached_token_streams(CharTokenizer(), str(text), 0.2, tmp_path / "cache")
    again = artifacts.cached_token_streams(CharTokenizer(), str(text), 0.2, tmp_path / "cache")
    assert len(calls) == 1  # the second call read the stored streams
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first, real(CharTokenizer(), str(text), 0.2), strict=True))
    text.write_text("xyz" * 400)  # new text, new streams: a stale cache would return the old ones
    changed = artifacts.cached_token_streams(CharTokenizer(), str(text), 0.2, tmp_path / "cache")
    assert len(calls) == 2 and len(changed[0]) == 960
