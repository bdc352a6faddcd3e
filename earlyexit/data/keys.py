"""Content keys for cached artifacts: a short hash of everything that identifies one.

Low in the layers because both the artifact cache (harness) and the cost profile (measure)
key what they store this way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["artifact_key"]


def artifact_key(**identity: Any) -> str:
    """16 hex digits of a SHA-1 over the identity as sorted JSON (non-JSON values as str)."""
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]
