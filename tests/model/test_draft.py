"""Draft models for `assisted`: the default pairs, and every refusal made before a model loads.

Offline throughout: local directories saved from tiny configs with word-level tokenizers, an
offline hub cache laid out as a download leaves it, and the embedded model with its draft sibling
once that directory exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPTNeoXForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from earlyexit.model import draft as draft_module
from earlyexit.model import loading
from earlyexit.model.draft import check_draft_model, default_draft_model, draft_parameters, load_draft_model
from earlyexit.model.loading import (
    EMBEDDED_DRAFT_DIR,
    EMBEDDED_MODEL_DIR,
    ModelNotAvailableError,
    pythia_config,
    resolve_model,
)

WORDS = ["<|endoftext|>", "the", "cat", "sat", "on", "mat", "[UNK]"]
needs_embedded_draft = pytest.mark.skipif(
    not (EMBEDDED_DRAFT_DIR / "model.safetensors").is_file()
    or not (EMBEDDED_MODEL_DIR / "model.safetensors").is_file(),
    reason=f"the embedded draft model is not at {EMBEDDED_DRAFT_DIR} yet",
)


def word_tokenizer(words=WORDS, eos: str = "<|endoftext|>") -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, unk_token="[UNK]")


def tiny(layers: int, hidden: int = 32, seed: int = 0, vocab: int = len(WORDS)) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    config = pythia_config(
        "70m", num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=4, vocab_size=vocab
    )
    return GPTNeoXForCausalLM(config).eval()


def save(path: Path, model, tokenizer) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """Checks read configs and tokenizers only: loading any model's weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", refuse)


@pytest.fixture
def pair(tmp_path):
    """(target dir, draft dir): 4 and 2 layers, one tokenizer."""
    tokenizer = word_tokenizer()
    return save(tmp_path / "target", tiny(4), tokenizer), save(tmp_path / "draft", tiny(2, seed=1), tokenizer)


# ----------------------------------------------------------------------------------- defaults


def test_default_draft_models():
    assert default_draft_model("embedded") == "embedded-draft"
    for target in ("pythia-160m", "pythia-410m", "1.4b", "EleutherAI/pythia-2.8b", "Pythia-1B"):
        assert default_draft_model(target) == "pythia-70m", target
    assert default_draft_model("pythia-70m") is None  # nothing smaller
    assert default_draft_model("70m") is None
    assert default_draft_model("gpt2") is None and default_draft_model("/some/dir") is None


def test_embedded_draft_resolves_to_its_directory():
    assert resolve_model("embedded-draft") == str(EMBEDDED_DRAFT_DIR)
    assert EMBEDDED_DRAFT_DIR.parent == EMBEDDED_MODEL_DIR.parent


# ----------------------------------------------------------------------------------- checks


def test_a_smaller_draft_with_the_same_tokenizer_passes(pair, no_weights_loaded):
    target, draft = pair
    assert check_draft_model(target, draft) == []


def test_a_draft_as_large_as_the_target_warns(tmp_path, no_weights_loaded):
    tokenizer = word_tokenizer()
    target = save(tmp_path / "a", tiny(2), tokenizer)
    same = save(tmp_path / "b", tiny(2, seed=3), tokenizer)
    (warning,) = check_draft_model(target, same)
    assert "as large as the target" in warning and f"{draft_parameters(tiny(2).config):,}" in warning


def test_a_larger_draft_is_refused_naming_both_sizes(pair, no_weights_loaded):
    target, draft = pair
    small, large = draft_parameters(tiny(2).config), draft_parameters(tiny(4).config)
    with pytest.raises(ValueError) as info:
        check_draft_model(draft, target)  # the 4-layer model as the 2-layer model's draft
    message = str(info.value)
    assert f"draft model {target} has {large:,} parameters" in message
    assert f"target {draft} ({small:,})" in message


def test_parameters_are_estimated_from_the_config():
    model = tiny(3, hidden=64)
    assert draft_parameters(model.config) == sum(p.numel() for p in model.parameters())
    assert draft_parameters(pythia_config("pythia-160m")) == loading.PYTHIA_SIZES["160m"].n_params


@pytest.mark.parametrize(
    ("words", "eos", "problem"),
    [
        (
            ["<|endoftext|>", "the", "dog", "sat", "on", "mat", "[UNK]"],
            "<|endoftext|>",
            "vocabularies differ",
        ),
        (["<|endoftext|>", "cat", "the", "sat", "on", "mat", "[UNK]"], "<|endoftext|>", "2 of the target's"),
        (WORDS, "mat", "special tokens differ"),
    ],
    ids=["other-word", "other-ids", "other-eos"],
)
def test_another_tokenizer_is_refused_naming_both_models(
    tmp_path, pair, words, eos, problem, no_weights_loaded
):
    target, _ = pair
    other = save(tmp_path / "other", tiny(2), word_tokenizer(words, eos))
    with pytest.raises(ValueError) as info:
        check_draft_model(target, other)
    message = str(info.value)
    assert f"draft model {other} does not share the tokenizer of the target {target}" in message
    assert problem in message


def test_an_unknown_draft_offline_says_how_to_get_it_before_loading(pair, hf_offline, no_weights_loaded):
    target, _ = pair
    with pytest.raises(ModelNotAvailableError) as info:
        check_draft_model(target, "some-org/absent-draft")
    message = str(info.value)
    assert "'some-org/absent-draft'" in message and "offline mode is on" in message
    assert "hf download some-org/absent-draft" in message


def test_a_missing_draft_directory_and_a_directory_without_weights_are_refused(tmp_path, pair):
    target, _ = pair
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        check_draft_model(target, str(tmp_path / "absent"))
    hollow = tmp_path / "hollow"
    tiny(2).config.save_pretrained(hollow)
    word_tokenizer().save_pretrained(hollow)
    with pytest.raises(ModelNotAvailableError, match="holds a config but no weights"):
        check_draft_model(target, str(hollow))


def test_a_missing_embedded_draft_says_how_to_recreate_it(tmp_path, monkeypatch, no_weights_loaded):
    monkeypatch.setattr(loading, "EMBEDDED_DRAFT_DIR", tmp_path / "absent")
    with pytest.raises(ModelNotAvailableError) as info:
        check_draft_model("embedded", "embedded-draft")
    message = str(info.value)
    assert f"the embedded draft model is missing from {tmp_path / 'absent'}" in message
    assert "scripts/train_embedded_model.py" in message and "--layers 2 --tokenizer" in message


# ----------------------------------------------------------------------------------- the hub cache


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline hub cache with tiny stand-ins for pythia-410m and pythia-70m (one tokenizer);
    pythia-160m has its config and tokenizer cached but not its weights."""
    from hub_cache import save_hub_model

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(transformers.utils.hub, "HF_HUB_CACHE", str(cache), raising=False)
    tokenizer = word_tokenizer()
    save_hub_model(cache, "EleutherAI/pythia-410m", tiny(4), tokenizer, "a" * 40)
    save_hub_model(cache, "EleutherAI/pythia-70m", tiny(2), tokenizer, "b" * 40)
    snapshot = save_hub_model(cache, "EleutherAI/pythia-160m", tiny(2), tokenizer, "c" * 40)
    (snapshot / "model.safetensors").unlink()
    return cache


def test_pythia_pair_checks_and_loads_offline_with_its_commit(hub_cache):
    assert check_draft_model("pythia-410m", default_draft_model("pythia-410m")) == []
    model, fingerprint = load_draft_model("pythia-70m", torch.float64, "cpu")
    assert model.dtype == torch.float64 and not model.training and model.config.num_hidden_layers == 2
    assert fingerprint == f"hub_id=EleutherAI/pythia-70m;revision=main;commit={'b' * 40}"


def test_a_draft_whose_weights_are_not_cached_is_refused_offline(hub_cache, no_weights_loaded):
    with pytest.raises(ModelNotAvailableError) as info:
        check_draft_model("pythia-410m", "pythia-160m")
    message = str(info.value)
    assert "its weights are not cached and offline mode is on" in message
    assert "hf download EleutherAI/pythia-160m" in message


def test_a_local_draft_is_fingerprinted_by_its_weights(pair):
    _, draft = pair
    model, fingerprint = load_draft_model(draft, torch.float32, "cpu")
    assert fingerprint == f"weights={loading.directory_fingerprint(Path(draft))}"
    assert model.config.num_hidden_layers == 2


# ----------------------------------------------------------------------------------- embedded


@needs_embedded_draft
def test_the_embedded_draft_serves_the_embedded_model():
    assert check_draft_model("embedded", "embedded-draft") == []
    draft, fingerprint = load_draft_model("embedded-draft", torch.float32, "cpu")
    assert fingerprint.startswith("weights=") and draft.config._name_or_path == "earlyexit/tiny-stdlib-draft"
    assert draft.config.num_hidden_layers == 2
    assert draft_module.default_draft_model("embedded") == "embedded-draft"
