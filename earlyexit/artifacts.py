"""Content-addressed cache for trained heads, so sweeping metric, target or mode never retrains.

The key hashes everything that changes the weights: model, head spec, training settings,
training data. Shipped artifacts (the embedded model's heads) are looked up first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from earlyexit.loading import EMBEDDED_MODEL_DIR

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
