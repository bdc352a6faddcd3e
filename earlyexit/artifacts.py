"""Content-addressed cache for trained heads, so sweeping metric, target or mode never retrains.

The key hashes everything that changes the weights: model, head spec, training settings,
training data. Shipped artifacts (the embedded model's heads) are looked up first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from earlyexit.adapter import ModelAdapter
from earlyexit.heads import HeadSet, HeadSpec
from earlyexit.loading import EMBEDDED_MODEL_DIR
from earlyexit.train import TrainConfig, train_heads

log = logging.getLogger(__name__)

SHIPPED_DIR = EMBEDDED_MODEL_DIR / "heads"


def artifact_key(**identity: Any) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def find_artifact(cache_dir: str | Path, kind: str, key: str, suffix: str) -> Path | None:
    for root in (SHIPPED_DIR, Path(cache_dir) / kind):
        path = root / f"{key}{suffix}"
        if path.exists():
            return path
    return None


def artifact_path(cache_dir: str | Path, kind: str, key: str, suffix: str, identity: dict) -> Path:
    """Where to write a new artifact; a JSON sidecar records what the key stands for."""
    root = Path(cache_dir) / kind
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{key}.json").write_text(json.dumps(identity, indent=2, sort_keys=True, default=str) + "\n")
    return root / f"{key}{suffix}"


def prepare_heads(
    adapter: ModelAdapter,
    spec: HeadSpec,
    tcfg: TrainConfig,
    source: str,
    train_stream: torch.Tensor,
    cache_dir: str | Path,
) -> tuple[HeadSet, str]:
    """Load heads from the artifact cache, or train them and store them there; returns (heads, key)."""
    identity = {"model": adapter.model_id, "spec": spec, "train": tcfg, "data": source}
    key = artifact_key(**identity)
    if spec.architecture == "shared":
        return HeadSet(adapter, spec), key
    found = find_artifact(cache_dir, "heads", key, ".safetensors")
    if found is not None:
        log.info("heads: cached %s", found)
        return HeadSet.load(found, adapter), key
    heads = HeadSet(adapter, spec)
    path = artifact_path(cache_dir, "heads", key, ".safetensors", identity)
    train_heads(adapter, heads, train_stream, tcfg, checkpoint=path.with_suffix(".ckpt"))
    heads.save(path)
    path.with_suffix(".ckpt").unlink(missing_ok=True)
    log.info("heads: trained and stored %s", path)
    return heads, key


def cached_json(cache_dir: str | Path, kind: str, identity: dict, compute) -> dict:
    """Return the JSON artifact for `identity`, computing and storing it on a miss."""
    key = artifact_key(**identity)
    found = find_artifact(cache_dir, kind, key, ".result.json")
    if found is not None:
        log.info("%s: cached %s", kind, found)
        return json.loads(found.read_text())
    value = compute()
    path = artifact_path(cache_dir, kind, key, ".result.json", identity)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)
    return value
