"""Model loading: Pythia shapes built offline, round-trips by path, and fast, clear offline failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

from earlyexit.data.paths import shared_pythia_tokenizer_file
from earlyexit.model import loading
from earlyexit.model.loading import (
    EMBEDDED_MODEL_DIR,
    PYTHIA_SIZES,
    ModelNotAvailableError,
    load_model,
    pythia_config,
    resolve_model,
)

NOMINAL_PARAMS = {"70m": 70e6, "160m": 160e6, "410m": 410e6, "1b": 1.0e9, "1.4b": 1.4e9, "2.8b": 2.8e9}
SHAPES = {  # layers, hidden, heads: the published Pythia architectures
    "70m": (6, 512, 8),
    "160m": (12, 768, 12),
    "410m": (24, 1024, 16),
    "1b": (16, 2048, 8),
    "1.4b": (24, 2048, 16),
    "2.8b": (32, 2560, 32),
}
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"  # discard port: refused at once, on any machine

needs_shared_tokenizer = pytest.mark.skipif(
    shared_pythia_tokenizer_file() is None,
    reason="needs ../shared/data/tokenizers/gpt-neox-20b.json (optional offline data, absent here)",
)
needs_embedded = pytest.mark.skipif(
    not (EMBEDDED_MODEL_DIR / "model.safetensors").is_file(),
    reason=f"embedded model not committed yet at {EMBEDDED_MODEL_DIR}",
)


@pytest.mark.parametrize("size", list(SHAPES))
def test_pythia_config_shape_and_param_count(size: str) -> None:
    layers, hidden, heads = SHAPES[size]
    config = pythia_config(f"pythia-{size}")
    shape = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
    assert shape == (layers, hidden, heads)
    assert config.intermediate_size == 4 * hidden
    assert config.vocab_size == 50304
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert config.use_parallel_residual and not config.tie_word_embeddings
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == PYTHIA_SIZES[size].n_params
    assert abs(n_params / NOMINAL_PARAMS[size] - 1) < 0.03


def test_pythia_config_accepts_short_names_and_overrides() -> None:
    assert pythia_config("410m").to_dict() == pythia_config("pythia-410m").to_dict()
    small = pythia_config("70m", num_hidden_layers=2, hidden_size=64, num_attention_heads=4, rotary_pct=0.5)
    assert (small.num_hidden_layers, small.hidden_size, small.intermediate_size) == (2, 64, 256)
    assert small.rope_parameters["partial_rotary_factor"] == 0.5


def test_unknown_pythia_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        pythia_config("pythia-7b")
    message = str(info.value)
    assert "pythia-7b" in message
    for size in PYTHIA_SIZES:
        assert f"pythia-{size}" in message


def test_resolve_model(tmp_path: Path) -> None:
    assert resolve_model("embedded") == str(EMBEDDED_MODEL_DIR)
    assert resolve_model("pythia-410m") == "EleutherAI/pythia-410m"
    assert resolve_model("1.4b") == "EleutherAI/pythia-1.4b"
    assert resolve_model("Pythia-2.8B") == "EleutherAI/pythia-2.8b"
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("gpt2") == "gpt2"
    assert resolve_model("org/some-model") == "org/some-model"


def _save_tiny_model(path: Path) -> GPTNeoXForCausalLM:
    words = ["<|endoftext|>", "the", "cat", "sat", "on", "mat", "[UNK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]")
    config = pythia_config(
        "70m", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=len(words)
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def test_saved_model_loads_back_by_path_with_identical_logits(tmp_path: Path) -> None:
    original = _save_tiny_model(tmp_path)
    model, tokenizer = load_model(str(tmp_path))
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32
    ids = tokenizer("the cat sat on the mat", return_tensors="pt").input_ids
    assert ids.tolist() == [[1, 2, 3, 4, 1, 5]]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    model64, _ = load_model(str(tmp_path), dtype=torch.float64)
    assert model64.dtype == torch.float64


def test_missing_local_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_missing_embedded_model_says_how_to_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "EMBEDDED_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(ModelNotAvailableError, match="train_embedded_model.py"):
        load_model()


def _skip_if_cached(hub_id: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        pytest.skip(f"{hub_id} is in the local HF cache; this test needs it absent")


def _assert_fast_failure(limit_s: float) -> None:
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("pythia-410m")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "pythia-410m" in message and "EleutherAI/pythia-410m" in message
    assert "download EleutherAI/pythia-410m" in message
    assert elapsed < limit_s, f"took {elapsed:.1f} s"


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_missing_model_fails_fast(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_if_cached("EleutherAI/pythia-410m")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    _assert_fast_failure(limit_s=5)


@pytest.mark.parametrize("endpoint", [None, UNREACHABLE_ENDPOINT])
def test_unreachable_hub_fails_fast_without_offline_vars(
    endpoint: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _skip_if_cached("EleutherAI/pythia-410m")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if endpoint is None:
        monkeypatch.delenv("HF_ENDPOINT", raising=False)
        if loading.hub_unreachable_reason() is None:
            pytest.skip("the hub is reachable here; loading would download pythia-410m")
    else:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    _assert_fast_failure(limit_s=10)


def test_hub_probe_gives_up_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: object, **kwargs: object) -> None:
        time.sleep(5)

    monkeypatch.setattr(loading.urllib.request, "urlopen", hang)
    start = time.monotonic()
    reason = loading.hub_unreachable_reason(timeout=0.2)
    assert reason is not None and "no answer" in reason
    assert time.monotonic() - start < 2


@needs_shared_tokenizer
def test_shared_pythia_tokenizer() -> None:
    tokenizer = loading.shared_pythia_tokenizer()
    assert tokenizer("Hello world").input_ids == [12092, 1533]
    assert tokenizer.eos_token_id == 0
    assert len(tokenizer) <= pythia_config("70m").vocab_size


@needs_embedded
def test_embedded_default_model_loads() -> None:
    model, tokenizer = load_model()
    ids = tokenizer("def main():", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[:2] == ids.shape
    assert torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- revisions and identity


def _tiny_pythia(seed: int) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    config = pythia_config("410m", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=7)
    return GPTNeoXForCausalLM(config).eval()


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face hub cache holding EleutherAI/pythia-410m at main and at step1000."""
    from hub_cache import save_hub_model

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(transformers.utils.hub, "HF_HUB_CACHE", str(cache), raising=False)
    tokenizer = _word_tokenizer()
    save_hub_model(cache, "EleutherAI/pythia-410m", _tiny_pythia(0), tokenizer, "a" * 40, refs=("main",))
    save_hub_model(cache, "EleutherAI/pythia-410m", _tiny_pythia(1), tokenizer, "b" * 40, refs=("step1000",))
    return cache


def _word_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<|endoftext|>", "the", "cat", "sat", "on", "mat", "[UNK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]")


def test_revision_loads_that_checkpoint_and_is_identified_by_its_commit(hub_cache: Path) -> None:
    ids = torch.tensor([[1, 2, 3, 4]])
    main, _ = load_model("pythia-410m")
    step, tokenizer = load_model("pythia-410m", revision="step1000")
    with torch.no_grad():
        assert torch.equal(main(ids).logits, _tiny_pythia(0)(ids).logits)
        assert torch.equal(step(ids).logits, _tiny_pythia(1)(ids).logits)
    assert tokenizer("the cat").input_ids == [1, 2]
    assert loading.model_fingerprint("pythia-410m") == {
        "hub_id": "EleutherAI/pythia-410m",
        "revision": "main",
        "commit": "a" * 40,
    }
    assert loading.model_fingerprint("pythia-410m", "step1000")["commit"] == "b" * 40


def test_a_revision_missing_offline_says_how_to_get_it(hub_cache: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="download EleutherAI/pythia-410m --revision step2000"):
        load_model("pythia-410m", revision="step2000")


@pytest.mark.parametrize(
    ("name", "revision", "message"),
    [
        ("pythia-410m", "step999", r"model.revision='step999' is not a revision of EleutherAI/pythia-410m"),
        ("pythia-70m", "latest", "step0, step1, step2, step4 ... step512, step1000"),
        ("embedded", "step1000", "applies to hub models only"),
    ],
)
def test_bad_revisions_fail_before_loading(name: str, revision: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loading.check_revision(name, revision)


def test_good_revisions_pass() -> None:
    for revision in (None, "main", "step0", "step512", "step1000", "step143000", "f" * 40):
        loading.check_revision("pythia-410m", revision)
    loading.check_revision("org/other-model", "any-branch")  # other hubs decide for themselves


def test_a_local_directory_is_identified_by_its_weights(tmp_path: Path) -> None:
    _save_tiny_model(tmp_path / "a")
    _save_tiny_model(tmp_path / "b")  # the same weights (seed 0) at another path
    first = loading.model_fingerprint(str(tmp_path / "a"))
    assert first == loading.model_fingerprint(str(tmp_path / "b"))
    torch.manual_seed(1)
    model = GPTNeoXForCausalLM.from_pretrained(tmp_path / "a")
    model.gpt_neox.embed_in.weight.data.add_(1.0)
    model.save_pretrained(tmp_path / "a")  # other weights under the same path
    assert loading.model_fingerprint(str(tmp_path / "a")) != first
