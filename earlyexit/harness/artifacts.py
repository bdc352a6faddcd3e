"""Content-addressed cache for trained heads, so sweeping metric, target or mode never retrains.

The key hashes everything that changes the weights: the model (hub id + the commit its revision
resolved to, or a hash of a local directory's weights), head spec, training settings, and the
training text's content (`earlyexit.data.streams.text_fingerprint`), never a name or a path:
changed text under the same path trains new heads, the same text under another path reuses them.
Shipped artifacts (the embedded model's heads) are looked up first.

A cached artifact that cannot be read (a truncated file from a full disk or a copy cut short,
invalid JSON) is moved aside with a warning and made again: it must never fail every rerun.

Concurrent jobs (a multirun, SLURM jobs sharing the cache) that miss the same artifact make it
once: the first takes an exclusive ``flock`` on ``<kind>/<key>.lock`` and makes it, the others wait
on the lock and then read what it wrote (`made_once`). Artifacts are written to a temporary file
and renamed, so a job killed while it holds the lock leaves no partial artifact, and the kernel
releases its lock when it dies, so the next job makes the artifact itself (heads resume from their
training checkpoint).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from earlyexit.data.keys import artifact_key
from earlyexit.data.streams import text_fingerprint, token_streams
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.train import TrainConfig, read_checkpoint, train_heads
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.loading import EMBEDDED_MODEL_DIR

log = logging.getLogger(__name__)

SHIPPED_DIR = EMBEDDED_MODEL_DIR / "heads"
T = TypeVar("T")


def quarantine(path: Path, err: BaseException) -> Path:
    """Move an unreadable artifact aside (kept, not deleted, for a look) and say so."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(aside)
    log.warning(
        "cached artifact %s is unreadable (%s: %s): moved aside to %s; making it again",
        path,
        type(err).__name__,
        str(err).splitlines()[0] if str(err) else "",
        aside.name,
    )
    return aside


def read_or_quarantine(path: Path, read: Callable[[Path], T]) -> T | None:
    """``read(path)``, or None after moving the file aside when it cannot be read.

    Shipped artifacts are part of the package: one that is unreadable is an install problem,
    raised with a hint instead of moved.
    """
    try:
        return read(path)
    except Exception as err:  # what a corrupt file raises depends on the reader (safetensors, json)
        if path.is_relative_to(SHIPPED_DIR):
            raise RuntimeError(
                f"a shipped artifact {path} is unreadable ({type(err).__name__}: {err}); reinstall "
                "the package (pip install -e .) or restore it with git checkout"
            ) from err
        quarantine(path, err)
        return None


@contextmanager
def artifact_lock(cache_dir: str | Path, kind: str, key: str) -> Iterator[None]:
    """Hold the exclusive lock of one artifact; says so when another job holds it (and waits)."""
    root = Path(cache_dir) / kind
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{key}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s %s: another job is making it; waiting for it (lock %s)", kind, key, path)
            start = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("%s %s: lock released after %.0f s", kind, key, time.monotonic() - start)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def made_once(
    cache_dir: str | Path, kind: str, key: str, read: Callable[[], T | None], make: Callable[[], T]
) -> T:
    """``read()`` (None on a miss), else ``make()`` under the artifact's lock, reading again once the
    lock is held: a job that waited finds what the holder made and does not make it again."""
    found = read()
    if found is not None:
        return found
    with artifact_lock(cache_dir, kind, key):
        found = read()
        return found if found is not None else make()


def find_artifact(cache_dir: str | Path, kind: str, key: str, suffix: str) -> Path | None:
    for root in (SHIPPED_DIR, Path(cache_dir) / kind):
        path = root / f"{key}{suffix}"
        if path.exists():
            return path
    return None


def artifact_path(
    cache_dir: str | Path, kind: str, key: str, suffix: str, identity: dict, about: dict | None = None
) -> Path:
    """Where to write a new artifact; a JSON sidecar records what the key stands for (and, under
    ``about``, readable context that is not part of the key, such as the data source's name)."""
    root = Path(cache_dir) / kind
    root.mkdir(parents=True, exist_ok=True)
    sidecar = {**identity, **({"about": about} if about else {})}
    (root / f"{key}.json").write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n")
    return root / f"{key}{suffix}"


def prepare_heads(
    adapter: ModelAdapter,
    spec: HeadSpec,
    tcfg: TrainConfig,
    data: dict,
    train_stream: torch.Tensor,
    cache_dir: str | Path,
    model: dict | None = None,
    about: dict | None = None,
) -> tuple[HeadSet, str]:
    """Load heads from the artifact cache, or train them and store them there; returns (heads, key).

    ``model`` is the model's content identity (`earlyexit.model.loading.model_fingerprint`),
    ``data`` the training text's (e.g. ``{"text": text_fingerprint(source), "heldout_fraction": f}``).
    """
    identity = {"model": model or {"id": adapter.model_id}, "spec": spec, "train": tcfg, "data": data}
    key = artifact_key(**identity)
    if spec.architecture == "shared":
        return HeadSet(adapter, spec), key

    def cached() -> HeadSet | None:
        found = find_artifact(cache_dir, "heads", key, ".safetensors")
        if found is None:
            return None
        # The key covers the model's content, so a copy of the same weights under another path is
        # the same model: the name check in HeadSet.load would refuse it for nothing.
        loaded = read_or_quarantine(found, lambda p: HeadSet.load(p, adapter, check_model_id=False))
        if loaded is not None:
            log.info("heads: cached %s", found)
        return loaded

    def train() -> HeadSet:
        heads = HeadSet(adapter, spec)
        path = artifact_path(cache_dir, "heads", key, ".safetensors", identity, about)
        ckpt = path.with_suffix(".ckpt")
        if ckpt.exists():  # resume from it (a job killed while training), unless it is unreadable
            read_or_quarantine(ckpt, read_checkpoint)
        train_heads(adapter, heads, train_stream, tcfg, checkpoint=ckpt)
        heads.save(path)  # atomic: written aside, then renamed
        ckpt.unlink(missing_ok=True)
        log.info("heads: trained and stored %s", path)
        return heads

    return made_once(cache_dir, "heads", key, cached, train), key


def cached_json(cache_dir: str | Path, kind: str, identity: dict, compute) -> dict:
    """Return the JSON artifact for `identity`, computing and storing it on a miss."""
    key = artifact_key(**identity)

    def cached() -> dict | None:
        found = find_artifact(cache_dir, kind, key, ".result.json")
        if found is None:
            return None
        value = read_or_quarantine(found, _read_json_object)
        if value is not None:
            log.info("%s: cached %s", kind, found)
        return value

    def make() -> dict:
        value = compute()
        path = artifact_path(cache_dir, kind, key, ".result.json", identity)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(value, indent=2))
        tmp.replace(path)
        return value

    return made_once(cache_dir, kind, key, cached, make)


def _read_json_object(path: Path) -> dict:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _read_streams(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    streams = load_file(path)
    return streams["train"], streams["calibration"], streams["heldout"]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the tokenizer's full definition, so two models sharing a tokenizer share streams."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}-{len(tokenizer)}"
    return hashlib.sha1(f"{blob}-eos{tokenizer.eos_token_id}".encode()).hexdigest()


def cached_token_streams(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    heldout_fraction: float,
    cache_dir: str | Path,
    text: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`data.token_streams`, stored once per tokenizer and text: tokenising the stdlib corpus takes
    longer than the rest of a cached run, and every run of a sweep needs the same streams.

    Keyed by the text's content (``text``, default ``text_fingerprint(source)``), not its path.
    """
    identity = {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "text": text or text_fingerprint(source),
        "heldout_fraction": heldout_fraction,
    }
    key = artifact_key(**identity)
    path = Path(cache_dir) / "tokens" / f"{key}.safetensors"

    def cached() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if not path.exists():
            return None
        streams = read_or_quarantine(path, _read_streams)
        if streams is not None:
            log.info("token streams: cached %s", path)
        return streams

    def make() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        train, calib, heldout = token_streams(tokenizer, source, heldout_fraction)
        artifact_path(cache_dir, "tokens", key, ".safetensors", identity, {"source": source})
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"train": train, "calibration": calib, "heldout": heldout}, str(tmp))
        tmp.replace(path)  # atomic: concurrent jobs of a multirun never read a half-written file
        return train, calib, heldout

    return made_once(cache_dir, "tokens", key, cached, make)
