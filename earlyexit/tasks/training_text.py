"""Where the heads' training text comes from, resolved before any model loads.

Every Pythia config trains on a hub dataset (wikitext-103); offline, a run used to load the
model and then die on a raw ``ConnectionError`` when it asked the hub for the text. The text is
resolved like a task's data: the stdlib corpus, a local file or folder (``data.source``), the
hub online, the Hugging Face datasets cache offline, or token streams this cache already holds
for that text; otherwise the error names each way to provide it.
"""

from __future__ import annotations

import json
from pathlib import Path

from earlyexit.data.paths import shared_data_dir
from earlyexit.data.streams import TEXT_SUFFIXES, looks_like_path
from earlyexit.tasks.offline import datasets_offline, is_offline

__all__ = ["TEXT_SOURCES", "TextSourceNotAvailableError", "resolve_text_source"]

TEXT_SOURCES = ("stdlib", "file", "folder", "hub", "datasets_cache", "token_cache")


class TextSourceNotAvailableError(ValueError):
    """The training text cannot be read here; the message names the ways to provide it."""


def _local_example() -> str:
    shared = shared_data_dir()
    corpus = shared / "corpora" / "wikitext-2-valid.txt" if shared is not None else None
    return str(corpus) if corpus is not None and corpus.is_file() else "/path/to/text.txt"


def _cached_streams(source: str, cache_dir: str | Path | None) -> bool:
    """Does the artifact cache hold token streams made from this dataset (any tokenizer)?"""
    if cache_dir is None:
        return False
    for sidecar in (Path(cache_dir) / "tokens").glob("*.json"):
        try:
            if json.loads(sidecar.read_text()).get("text") == f"dataset:{source}":
                return sidecar.with_suffix(".safetensors").is_file()
        except (OSError, ValueError):
            continue
    return False


def _in_datasets_cache(source: str) -> str | None:
    """None when `datasets` reads the dataset's train split from its cache, else why not."""
    import datasets

    datasets_offline()
    name, config = source.split(":", 1) if ":" in source else (source, None)
    try:
        datasets.load_dataset(name, config, split="train")
    except Exception as err:  # ConnectionError, FileNotFoundError, ValueError, ...
        first = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {first}"
    return None


def resolve_text_source(source: str, offline: bool | None = None, cache_dir: str | Path | None = None) -> str:
    """One of ``TEXT_SOURCES`` for ``data.source``; raises `TextSourceNotAvailableError` (a ValueError)."""
    if source == "stdlib":
        return "stdlib"
    if not isinstance(source, str) or not source.strip():
        raise TextSourceNotAvailableError(
            f"data.source={source!r} names no text; valid: stdlib, a text file or folder, or a "
            "Hugging Face dataset ('name' or 'name:config')"
        )
    path = Path(source).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        if not any(p.suffix in TEXT_SUFFIXES and p.is_file() for p in path.rglob("*")):
            raise TextSourceNotAvailableError(
                f"data.source={source!r} is a folder with no text files ({', '.join(sorted(TEXT_SUFFIXES))})"
            )
        return "folder"
    if looks_like_path(source):
        raise TextSourceNotAvailableError(
            f"data.source={source!r} does not exist; expected a text file or a folder of text files"
        )
    if not is_offline(offline):
        return "hub"
    if _cached_streams(source, cache_dir):
        return "token_cache"
    miss = _in_datasets_cache(source)
    if miss is None:
        return "datasets_cache"
    import datasets

    raise TextSourceNotAvailableError(
        f"data.source={source!r} (the text the heads train on) cannot be read offline: the Hugging "
        f"Face datasets cache ({datasets.config.HF_DATASETS_CACHE}) has no copy of it ({miss}), and "
        f"the artifact cache holds no token streams made from it. Provide it one of three ways: "
        f"(a) load it once with network (`datasets.load_dataset({source.split(':')[0]!r}"
        + (f", {source.split(':', 1)[1]!r}" if ":" in source else "")
        + ")`) and copy the Hugging Face cache here (HF_HOME); (b) train on local text: "
        f"data.source={_local_example()} (a file, or a folder of {', '.join(sorted(TEXT_SUFFIXES))} "
        "files); (c) data.source=stdlib (the Python standard library's source)."
    )
