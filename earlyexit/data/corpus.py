"""Text that exists on every machine, for the embedded model and the default runs.

The embedded model must be reproducible anywhere without a download, so its corpus is
the Python standard library's own source (non-test modules) plus the English reference
text in ``pydoc_data``. Documents are split into train / held-out by a stable hash of
their name, so the split never depends on file-system order.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "turtledemo"}


def _is_heldout(name: str, heldout_percent: int) -> bool:
    digest = hashlib.sha1(name.encode()).digest()
    return digest[0] * 100 // 256 < heldout_percent


def stdlib_documents() -> Iterator[tuple[str, str]]:
    """Yield (name, text) for every non-test stdlib module and every pydoc topic, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for fname in filenames:
            if fname.endswith(".py") and not fname.startswith("test_"):
                files.append(Path(dirpath) / fname)
    for path in sorted(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield str(path.relative_to(root)), text
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield f"pydoc:{key}", topics[key]


def split_documents(heldout_percent: int = 5) -> tuple[list[str], list[str]]:
    """Return (train_texts, heldout_texts) of the stdlib corpus, split by a hash of the name."""
    train, heldout = [], []
    for name, text in stdlib_documents():
        (heldout if _is_heldout(name, heldout_percent) else train).append(text)
    return train, heldout
