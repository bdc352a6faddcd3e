"""Where the project lives on disk, so code and tests agree on the optional offline data."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """The offline data folder ``<repo>/../shared/data``, or None where this machine lacks it.

    It is never required: callers must work (or tests skip) without it.
    """
    path = REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def shared_pythia_tokenizer_file() -> Path | None:
    """The offline GPT-NeoX-20B (Pythia) tokenizer JSON, or None if the shared data is absent."""
    root = shared_data_dir()
    if root is None:
        return None
    path = root / "tokenizers" / "gpt-neox-20b.json"
    return path if path.is_file() else None
