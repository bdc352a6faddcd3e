"""Load a Hugging Face GPT-NeoX causal LM (Pythia or the embedded model) without ever hanging offline.

transformers retries an unreachable hub for ~25 s before failing, and the error does not say
how to get the model onto an offline machine. Here the local cache is tried first, the hub is
probed once with a short timeout, and a missing model raises :class:`ModelNotAvailableError`
that names it and says how to fetch it. Pythia architectures can also be built from a config
alone (random weights), which is what tests and timing runs on offline machines use.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from earlyexit.data.paths import shared_pythia_tokenizer_file

EMBEDDED_MODEL_DIR = Path(__file__).parents[1] / "assets" / "tiny-stdlib"
DEFAULT_MODEL = "embedded"
# Stable identity of the embedded model, whatever directory the repository was cloned into.
EMBEDDED_MODEL_ID = "earlyexit/tiny-stdlib"
# Its 2-layer sibling with the same tokenizer: the draft model of `assisted` on the embedded model.
EMBEDDED_DRAFT_DIR = Path(__file__).parents[1] / "assets" / "tiny-stdlib-draft"
EMBEDDED_DRAFT = "embedded-draft"
EMBEDDED_DRAFT_ID = "earlyexit/tiny-stdlib-draft"
HUB_PROBE_TIMEOUT_S = 3.0
PYTHIA_EOS = "<|endoftext|>"


class ModelNotAvailableError(RuntimeError):
    """The model is neither on disk nor downloadable from here; the message says how to get it."""


@dataclass(frozen=True)
class PythiaSpec:
    """One Pythia model: hub id, shape, and its total parameter count (embeddings included)."""

    hub_id: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    n_params: int


# n_params: counted on the meta device from pythia_config(); equals the "total params" column
# of the Pythia README (EleutherAI/pythia), so the configs reproduce the released shapes.
PYTHIA_SIZES: dict[str, PythiaSpec] = {
    "70m": PythiaSpec("EleutherAI/pythia-70m", 6, 512, 8, 70_426_624),
    "160m": PythiaSpec("EleutherAI/pythia-160m", 12, 768, 12, 162_322_944),
    "410m": PythiaSpec("EleutherAI/pythia-410m", 24, 1024, 16, 405_334_016),
    "1b": PythiaSpec("EleutherAI/pythia-1b", 16, 2048, 8, 1_011_781_632),
    "1.4b": PythiaSpec("EleutherAI/pythia-1.4b", 24, 2048, 16, 1_414_647_808),
    "2.8b": PythiaSpec("EleutherAI/pythia-2.8b", 32, 2560, 32, 2_775_208_960),
}

# Shared by every Pythia size. transformers 5 keeps rotary settings in `rope_parameters`
# (`rotary_pct` -> `partial_rotary_factor`, `rotary_emb_base` -> `rope_theta`).
_PYTHIA_COMMON: dict[str, Any] = {
    "vocab_size": 50304,
    "max_position_embeddings": 2048,
    "use_parallel_residual": True,
    "layer_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "hidden_act": "gelu",
    "attention_bias": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
_PYTHIA_ROTARY_PCT = 0.25
_PYTHIA_ROTARY_BASE = 10000.0


# The training checkpoints every Pythia repository holds as branches (Biderman et al. 2023):
# step0, log-spaced steps 1..512, then every 1000 steps to 143000 (= main).
PYTHIA_STEPS = (0, *(2**i for i in range(10)), *range(1000, 143001, 1000))
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Pythia's released weights are float16 (its hub config.json says so): model.dtype=auto on CUDA.
PYTHIA_DTYPE = "float16"


def pythia_names() -> list[str]:
    """The accepted model names, e.g. ``pythia-410m``, smallest first."""
    return [f"pythia-{size}" for size in PYTHIA_SIZES]


def pythia_size(name: str) -> str | None:
    """Map "pythia-410m", "410m" or "EleutherAI/pythia-410m" (any case) to "410m"; None if not Pythia."""
    key = name.strip().lower()
    key = key.removeprefix("eleutherai/").removeprefix("pythia-")
    return key if key in PYTHIA_SIZES else None


def pythia_config(name: str, **overrides: Any) -> GPTNeoXConfig:
    """Build a Pythia model's config offline, e.g. for tests or random-weight timing.

    `overrides` are GPTNeoXConfig arguments (e.g. ``num_hidden_layers=2``). The pre-v5 names
    ``rotary_pct`` and ``rotary_emb_base`` are accepted too. Overriding ``hidden_size`` alone
    keeps Pythia's ``intermediate_size = 4 * hidden_size``.
    """
    size = pythia_size(name)
    if size is None:
        raise ValueError(f"unknown Pythia model {name!r}; valid names: {', '.join(pythia_names())}")
    spec = PYTHIA_SIZES[size]
    overrides = dict(overrides)
    rope = {
        "rope_type": "default",
        "rope_theta": float(overrides.pop("rotary_emb_base", _PYTHIA_ROTARY_BASE)),
        "partial_rotary_factor": float(overrides.pop("rotary_pct", _PYTHIA_ROTARY_PCT)),
    }
    hidden = overrides.get("hidden_size", spec.hidden_size)
    kwargs: dict[str, Any] = {
        **_PYTHIA_COMMON,
        "num_hidden_layers": spec.num_hidden_layers,
        "hidden_size": spec.hidden_size,
        "num_attention_heads": spec.num_attention_heads,
        "intermediate_size": 4 * hidden,
        "rope_parameters": rope,
        **overrides,
    }
    return GPTNeoXConfig(**kwargs)


def check_revision(name_or_path: str, revision: str | None) -> None:
    """Reject a revision that cannot exist, before anything loads: local models have none, and a
    Pythia repository holds ``main``, ``step0`` ... ``step143000`` (PYTHIA_STEPS) and commits."""
    if revision is None:
        return
    revision = str(revision)
    source = resolve_model(name_or_path)
    if Path(source).expanduser().is_dir() or _looks_like_path(source):
        raise ValueError(
            f"model.revision={revision!r} applies to hub models only; {name_or_path!r} is a local model "
            "(leave model.revision unset, or point model.name at the directory of that revision)"
        )
    if pythia_size(name_or_path) is None or revision == "main" or _COMMIT.match(revision):
        return  # other hub models: any branch, tag or commit; the hub (or the cache) decides
    step = revision.removeprefix("step")
    if revision.startswith("step") and step.isdigit() and int(step) in PYTHIA_STEPS:
        return
    raise ValueError(
        f"model.revision={revision!r} is not a revision of {source}; valid: main, a 40-character "
        "commit hash, or a training checkpoint: step0, step1, step2, step4 ... step512, "
        "step1000, step2000 ... step143000"
    )


def resolve_model(name_or_path: str) -> str:
    """Turn a model name into what ``from_pretrained`` takes: a local directory or a hub id.

    "embedded" -> the packaged model's directory ("embedded-draft" -> its draft sibling's);
    "pythia-410m" / "410m" -> its hub id; an existing directory -> itself; anything else is
    passed through as a hub id.
    """
    if name_or_path == DEFAULT_MODEL:
        return str(EMBEDDED_MODEL_DIR)
    if name_or_path == EMBEDDED_DRAFT:
        return str(EMBEDDED_DRAFT_DIR)
    size = pythia_size(name_or_path)
    if size is not None:
        return PYTHIA_SIZES[size].hub_id
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    return name_or_path


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    revision: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (eval mode, SDPA attention) and its tokenizer, at a hub ``revision`` if given.

    Raises ModelNotAvailableError quickly when the model is not on disk and cannot be downloaded.
    """
    check_revision(name_or_path, revision)
    model = _from_pretrained(
        AutoModelForCausalLM, name_or_path, revision=revision, dtype=dtype, attn_implementation="sdpa"
    )
    if name_or_path == DEFAULT_MODEL:
        model.config._name_or_path = EMBEDDED_MODEL_ID
    elif name_or_path == EMBEDDED_DRAFT:
        model.config._name_or_path = EMBEDDED_DRAFT_ID
    model.to(device)
    model.eval()
    return model, load_tokenizer(name_or_path, revision)


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer that belongs to a model name or path, with the same offline rules."""
    return _from_pretrained(AutoTokenizer, name_or_path, revision=revision)


def _cached_hub_file(hub_id: str, filename: str, revision: str | None) -> Path | None:
    """A file of a hub repository in the local Hugging Face cache (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, filename, revision=revision or "main")
    return Path(found) if isinstance(found, str) else None


def native_dtype(name_or_path: str, revision: str | None = None) -> str | None:
    """The dtype a model was saved in, from its config alone (no weights, no network), or None.

    Pythia is float16 even where its config is not cached yet; other hub models are read from
    the local cache, local directories from their config.json.
    """
    source = resolve_model(name_or_path)
    path = Path(source).expanduser()
    config = path / "config.json" if path.is_dir() else _cached_hub_file(source, "config.json", revision)
    if config is not None and config.is_file():
        data = json.loads(config.read_text())
        dtype = data.get("dtype") or data.get("torch_dtype")
        if isinstance(dtype, str):
            return dtype.removeprefix("torch.")
    return PYTHIA_DTYPE if pythia_size(name_or_path) is not None else None


def model_fingerprint(name_or_path: str, revision: str | None = None) -> dict[str, str]:
    """What a loaded model *is*, for cache keys: a hub model's id and the commit its revision
    resolved to in the local cache; a local directory's (and the embedded model's) content hash.

    A name alone is not enough: ``main`` moves, ``stepN`` checkpoints differ, and a local
    directory can be overwritten with other weights under the same path.
    """
    source = resolve_model(name_or_path)
    path = Path(source).expanduser()
    if path.is_dir():
        return {"weights": directory_fingerprint(path)}
    config = _cached_hub_file(source, "config.json", revision)
    commit = config.parent.name if config is not None else None
    return {"hub_id": source, "revision": revision or "main", "commit": commit or "unknown"}


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def directory_fingerprint(path: Path) -> str:
    """SHA-256 over a model directory's config.json and weight files (names and bytes)."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).iterdir()):
        if file.is_file() and (file.name == "config.json" or file.suffix in _WEIGHT_SUFFIXES):
            stat = file.stat()
            content = _file_sha256(str(file.resolve()), stat.st_size, stat.st_mtime_ns)
            digest.update(f"{file.name}\0{content}\0".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's content hash; memoised per (path, size, mtime) so a multirun hashes large weights once."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def shared_pythia_tokenizer() -> PreTrainedTokenizerFast:
    """The Pythia (GPT-NeoX-20B) tokenizer from ``../shared/data``, for models built from configs.

    Raises FileNotFoundError where the shared data folder is absent (it is optional).
    """
    path = shared_pythia_tokenizer_file()
    if path is None:
        raise FileNotFoundError("no ../shared/data/tokenizers/gpt-neox-20b.json next to the repository")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token=PYTHIA_EOS, eos_token=PYTHIA_EOS, unk_token=PYTHIA_EOS
    )


def hub_offline() -> bool:
    """Whether the user asked for offline mode (read now, not at import, so tests can toggle it)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def hub_endpoint() -> str:
    """The hub URL that huggingface_hub would use (honours HF_ENDPOINT)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Probe the hub once; return why it cannot be reached, or None if it answered.

    Any HTTP answer (even an error status) counts as reachable. The probe runs in a daemon
    thread joined with a deadline, because DNS resolution ignores socket timeouts.
    """
    url = hub_endpoint()
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except Exception as err:  # any failure to connect means "unreachable"
            outcome.append(f"{type(err).__name__}: {getattr(err, 'reason', err)}")

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]


def _looks_like_path(name: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else the user typed is meant as a path."""
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in name


def _from_pretrained(loader: Any, name_or_path: str, revision: str | None = None, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` that fails fast and clearly instead of retrying a dead hub."""
    source = resolve_model(name_or_path)
    if name_or_path == DEFAULT_MODEL and not EMBEDDED_MODEL_DIR.is_dir():
        raise ModelNotAvailableError(
            f"the embedded model is missing from {EMBEDDED_MODEL_DIR}; recreate it with "
            f"`python scripts/train_embedded_model.py --out {EMBEDDED_MODEL_DIR}`"
        )
    if name_or_path == EMBEDDED_DRAFT and not EMBEDDED_DRAFT_DIR.is_dir():
        raise ModelNotAvailableError(
            f"the embedded draft model is missing from {EMBEDDED_DRAFT_DIR}; recreate it with "
            f"`python scripts/train_embedded_model.py --out {EMBEDDED_DRAFT_DIR} --layers 2 "
            f"--tokenizer {EMBEDDED_MODEL_DIR}`"
        )
    if Path(source).expanduser().is_dir():
        return loader.from_pretrained(str(Path(source).expanduser()), **kwargs)
    if _looks_like_path(source):
        raise ModelNotAvailableError(f"model directory {source!r} does not exist")
    if revision is not None:
        kwargs["revision"] = revision
    local = {"local_files_only": True}
    if loader is AutoModelForCausalLM:
        # With peft installed (lm-eval pulls it in), transformers looks up adapter_config.json
        # on the hub without forwarding local_files_only, retrying for ~20 s offline.
        local["adapter_kwargs"] = {"local_files_only": True, **({"revision": revision} if revision else {})}
    try:
        return loader.from_pretrained(source, **local, **kwargs)
    except OSError as err:
        local_error = err
    if hub_offline():
        reason = "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
    else:
        probe = hub_unreachable_reason()
        reason = None if probe is None else f"the hub {hub_endpoint()} cannot be reached ({probe})"
    if reason is not None:
        raise ModelNotAvailableError(_how_to_get(name_or_path, source, reason, revision)) from local_error
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:  # e.g. a proxy that answers the probe but serves no models
        reason = f"downloading failed ({err})"
        raise ModelNotAvailableError(_how_to_get(name_or_path, source, reason, revision)) from err


def _how_to_get(name: str, hub_id: str, reason: str, revision: str | None = None) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    label = f"{name!r} (hub id {hub_id})" if name != hub_id else repr(hub_id)
    at = f" at revision {revision!r}" if revision else ""
    args = f"{hub_id} --revision {revision}" if revision else hub_id
    return (
        f"model {label}{at} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and {reason}. "
        f"To get it: on a machine with network run `hf download {args}` "
        f"(older huggingface_hub: `huggingface-cli download {args}`), then copy that machine's "
        f"Hugging Face cache here or point HF_HOME at a copy of it; or download with "
        f"`--local-dir DIR` and pass DIR as the model. The embedded default model ('{DEFAULT_MODEL}') "
        f"and Pythia shapes with random weights (earlyexit.model.loading.pythia_config) need no download."
    )
