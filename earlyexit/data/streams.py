"""Token streams for head training and calibration: local files, the stdlib corpus, or a HF dataset.

Training and calibration sample fixed-length windows from one token stream, so every
source is reduced to a list of documents, tokenised and joined with EOS.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from earlyexit.data.corpus import split_documents, stdlib_documents

TEXT_SUFFIXES = {".txt", ".py", ".md", ".rst", ".json", ".jsonl"}


def load_documents(source: str, split: str = "train", text_field: str = "text") -> list[str]:
    """Documents from `source`: "stdlib", a file, a directory of text files, or a HF dataset name.

    `split` picks "train" or "heldout" of the stdlib corpus; for a HF dataset it is the
    dataset split (e.g. "train", "validation").
    """
    if source == "stdlib":
        train, heldout = split_documents()
        return train if split == "train" else heldout
    path = Path(source).expanduser()
    if path.is_file():
        return [path.read_text(encoding="utf-8", errors="replace")]
    if path.is_dir():
        return [p.read_text(encoding="utf-8", errors="replace") for p in _text_files(path)]
    if looks_like_path(source):
        raise FileNotFoundError(f"text source {source!r} does not exist")
    return _hf_dataset_documents(source, split, text_field)


def text_fingerprint(source: str) -> str:
    """What the text of ``source`` *is*, for cache keys: a SHA-256 of its content, never its name.

    The stdlib corpus and local files or folders are hashed (document names relative to the
    source, then bytes), so changed text under the same path gets a new key and the same text
    under another path the same one. A hub dataset is identified by its name only: its text is
    not local, and its revision is not pinned.
    """
    digest = hashlib.sha256()
    if source == "stdlib":
        for name, text in stdlib_documents():
            digest.update(f"{name}\0{len(text)}\0".encode())
            digest.update(text.encode("utf-8", errors="replace"))
        return f"stdlib:{digest.hexdigest()}"
    path = Path(source).expanduser()
    if path.is_file():
        files = [("", path)]  # a single file: its name is not part of its text
    elif path.is_dir():
        files = [(str(p.relative_to(path)), p) for p in _text_files(path)]
    elif looks_like_path(source):
        raise FileNotFoundError(f"text source {source!r} does not exist")
    else:
        return f"dataset:{source}"
    for name, file in files:
        data = file.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return f"text:{digest.hexdigest()}"


def _text_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())


def looks_like_path(source: str) -> bool:
    """Paths start with / . ~ or name a file; dataset names ("org/name[:config]") do neither."""
    return source.startswith(("/", ".", "~")) or Path(source).suffix in TEXT_SUFFIXES


def _hf_dataset_documents(name: str, split: str, text_field: str) -> list[str]:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading the dataset {name!r} needs `pip install datasets`") from err
    config = None
    if ":" in name:  # "wikitext:wikitext-2-raw-v1"
        name, config = name.split(":", 1)
    rows = datasets.load_dataset(name, config, split=split)
    return [t for t in rows[text_field] if t and t.strip()]


def encode_documents(tokenizer: PreTrainedTokenizerBase, documents: list[str]) -> torch.Tensor:
    """One long stream of token ids, documents separated by EOS."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, batch: int, seq_len: int, seed: int, step: int) -> torch.Tensor:
    """`batch` random windows of `seq_len` tokens; a pure function of (seed, step) so resuming is exact."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - seq_len + 1, (batch,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def contiguous_windows(stream: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping windows covering the stream (held-out evaluation and calibration)."""
    n = len(stream) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    return stream[: n * seq_len].view(n, seq_len)


def token_streams(
    tokenizer: PreTrainedTokenizerBase, source: str, heldout_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, calibration, held-out) token streams from one text source.

    The stdlib corpus has its own held-out documents, halved into calibration and
    held-out; any other source is split by tokens, its last `heldout_fraction` halved.
    """
    if source == "stdlib":
        train = encode_documents(tokenizer, load_documents(source, "train"))
        rest = encode_documents(tokenizer, load_documents(source, "heldout"))
    else:
        stream = encode_documents(tokenizer, load_documents(source))
        cut = int(len(stream) * (1 - heldout_fraction))
        train, rest = stream[:cut], stream[cut:]
    half = len(rest) // 2
    return train, rest[:half], rest[half:]


def seeded_windows(stream: torch.Tensor, n: int, length: int, seed: int) -> list[torch.Tensor]:
    """`n` seeded windows of `length` tokens from a stream (the held-out benchmark's prompts)."""
    if len(stream) <= length:
        raise ValueError(f"held-out stream of {len(stream)} tokens is too short for {length}-token prompts")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - length, (n,), generator=gen).tolist()
    return [stream[s : s + length] for s in starts]
