"""Draft models for `assisted` (transformers' draft-model speculative decoding): which one, and
whether it can serve, decided before any model loads.

A draft must be smaller than its target and share its tokenizer exactly (assisted generation
compares token ids; transformers' universal assisted generation across tokenizers re-tokenises
text, which is another method). Everything here reads configs and tokenizers only, never
weights, and goes through `earlyexit.model.loading`, so an unavailable draft fails fast offline
with the same "how to get it" message as the main model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from earlyexit.model import loading
from earlyexit.model.loading import (
    DEFAULT_MODEL,
    EMBEDDED_DRAFT,
    ModelNotAvailableError,
    check_revision,
    load_model,
    load_tokenizer,
    model_fingerprint,
    pythia_size,
    resolve_model,
)

__all__ = ["check_draft_model", "default_draft_model", "draft_parameters", "load_draft_model"]

SMALLEST_PYTHIA = "pythia-70m"
# Weight files a model directory or hub snapshot holds (single file or sharded index).
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def default_draft_model(target_name: str) -> str | None:
    """The draft paired with a target by default, or None when there is none.

    The embedded model has its 2-layer sibling; every Pythia larger than 70m has pythia-70m (all
    Pythia sizes share one tokenizer); pythia-70m has nothing smaller, other models no known pair.
    """
    if target_name == DEFAULT_MODEL:
        return EMBEDDED_DRAFT
    size = pythia_size(target_name)
    if size is not None and f"pythia-{size}" != SMALLEST_PYTHIA:
        return SMALLEST_PYTHIA
    return None


def check_draft_model(
    target: str, draft: str, revision: str | None = None, target_revision: str | None = None
) -> list[str]:
    """Refuse a draft that cannot serve ``target``, before any model loads; return warnings.

    Raises ModelNotAvailableError when the draft (its config, tokenizer or weights) is neither on
    disk nor downloadable from here, ValueError when its tokenizer differs from the target's or it
    has more parameters (estimated from its config). A draft as large as the target only warns: it
    runs, but cannot be faster. ``revision`` is the draft's, ``target_revision`` the target's.
    """
    check_revision(draft, revision)
    draft_config = _config(draft, revision)
    _check_weights(draft, revision)
    target_config = _config(target, target_revision)
    _check_tokenizers(target, target_revision, draft, revision)
    n_draft, n_target = draft_parameters(draft_config), draft_parameters(target_config)
    if n_draft > n_target:
        raise ValueError(
            f"draft model {draft} has {n_draft:,} parameters, more than the target {target} "
            f"({n_target:,}): a draft must be smaller than its target to speed it up"
        )
    if n_draft == n_target:
        return [
            f"draft model {draft} is as large as the target {target} ({n_draft:,} parameters): "
            "assisted decoding with it can only be slower than the target alone"
        ]
    return []


def load_draft_model(
    name: str, dtype: torch.dtype, device: str, revision: str | None = None
) -> tuple[PreTrainedModel, str]:
    """The draft model (eval, on ``device`` in ``dtype``) and its fingerprint as one string, for
    the record: a local directory's weight hash, or a hub id, revision and resolved commit."""
    model, _ = load_model(name, dtype=dtype, device=device, revision=revision)
    identity = model_fingerprint(name, revision)
    return model, ";".join(f"{k}={v}" for k, v in identity.items())


def draft_parameters(config: PretrainedConfig) -> int:
    """Parameter count of the model a config describes, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _config(name: str, revision: str | None) -> PretrainedConfig:
    """The model's config, found as the model would be (the same offline rules and messages)."""
    return loading._from_pretrained(AutoConfig, name, revision=revision)


def _check_weights(name: str, revision: str | None) -> None:
    """A config alone does not make a model: its weights must be here too, or downloadable."""
    source = resolve_model(name)
    path = Path(source).expanduser()
    if path.is_dir():
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelNotAvailableError(f"model directory {source!r} holds a config but no weights")
        return
    if any(loading._cached_hub_file(source, f, revision) is not None for f in _WEIGHT_FILES):
        return
    if loading.hub_offline():
        reason = "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
    else:
        probe = loading.hub_unreachable_reason()
        reason = None if probe is None else f"the hub {loading.hub_endpoint()} cannot be reached ({probe})"
    if reason is not None:
        raise ModelNotAvailableError(
            loading._how_to_get(name, source, f"its weights are not cached and {reason}", revision)
        )


def _check_tokenizers(target: str, target_revision: str | None, draft: str, revision: str | None) -> None:
    """Assisted decoding passes token ids between the models: the vocabularies (ids included) and
    special tokens must be identical."""
    mine, theirs = load_tokenizer(target, target_revision), load_tokenizer(draft, revision)
    vocab_t, vocab_d = mine.get_vocab(), theirs.get_vocab()
    problems = []
    if vocab_t != vocab_d:
        differing = sum(vocab_d.get(token) != i for token, i in vocab_t.items())
        problems.append(
            f"vocabularies differ ({len(vocab_t)} vs {len(vocab_d)} tokens, {differing} of the target's "
            "tokens missing or under another id)"
        )
    special_t, special_d = _special(mine), _special(theirs)
    if special_t != special_d:
        problems.append(f"special tokens differ ({special_t} vs {special_d})")
    if problems:
        raise ValueError(
            f"draft model {draft} does not share the tokenizer of the target {target}: "
            f"{'; '.join(problems)}; assisted decoding compares token ids, so the draft needs the "
            "target's tokenizer exactly"
        )


def _special(tokenizer) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
