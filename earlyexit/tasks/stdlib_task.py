"""``stdlib_lambada``: a LAMBADA-style lm-eval task generated from held-out stdlib code.

It lives in the embedded model's own domain and needs no download, so the default run can
score accuracy anywhere.
"""

from __future__ import annotations

import json
import keyword
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

from earlyexit.data.streams import load_documents

log = logging.getLogger(__name__)

__all__ = ["STDLIB_TASK", "stdlib_lambada_examples", "stdlib_task_config"]

STDLIB_TASK = "stdlib_lambada"
# stdlib_lambada: LAMBADA-style, the last identifier of a line, given the code before it.
STDLIB_VERSION = 1
STDLIB_EXAMPLES = 500
STDLIB_CONTEXT_CHARS = 400
_LINE_END_IDENT = re.compile(r"(?<!\w)([A-Za-z_]\w{2,})[ \t]*$", re.MULTILINE)


def stdlib_lambada_examples(
    n: int = STDLIB_EXAMPLES, context_chars: int = STDLIB_CONTEXT_CHARS
) -> list[dict]:
    """Deterministic (context, target) pairs from the held-out stdlib corpus.

    The target is the last identifier of a line (3+ characters, not a keyword) that already
    occurs in the context, so it can be recalled rather than guessed, as in LAMBADA. The
    context is up to ``context_chars`` characters, starting at a line boundary, ending just
    before the target; the line's own text before the target is always present.
    """
    per_doc: list[list[dict]] = []
    for doc in load_documents("stdlib", "heldout"):
        found = []
        for match in _LINE_END_IDENT.finditer(doc):
            target, pos = match.group(1), match.start(1)
            line_start = doc.rfind("\n", 0, pos) + 1
            if keyword.iskeyword(target) or not doc[line_start:pos].strip():
                continue
            start = max(0, pos - context_chars)
            if start > 0:
                newline = doc.find("\n", start, line_start)
                start = newline + 1 if newline >= 0 else line_start
            context = doc[start:pos]
            if re.search(rf"(?<!\w){re.escape(target)}(?!\w)", context) is not None:
                found.append({"context": context, "target": target})
        if found:
            per_doc.append(found)
    if not per_doc:
        raise RuntimeError("the held-out stdlib corpus gave no stdlib_lambada examples")
    # An even share per document, so a few long tables (e.g. codecs) do not dominate.
    quota = math.ceil(n / len(per_doc))
    rows = [row for found in per_doc for row in _evenly(found, quota)]
    return _evenly(rows, n)


def _evenly(items: list, k: int) -> list:
    """``k`` items spread evenly over ``items`` (all of them if there are fewer)."""
    if len(items) <= k:
        return list(items)
    return [items[i * len(items) // k] for i in range(k)]


def _readable_jsonl(path: Path) -> bool:
    """Every line a JSON object with the task's two fields (a cut-short file fails on its last)."""
    try:
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        return False
    return bool(rows) and all(isinstance(r, dict) and {"context", "target"} <= set(r) for r in rows)


def stdlib_task_config(cache_dir: Path, lambada_yaml: Path) -> dict[str, Any]:
    """The task's lm-eval config (LAMBADA's metrics, from ``lambada_yaml``), its data written once."""
    tag = f"v{STDLIB_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"
    path = (cache_dir / f"stdlib_lambada-{tag}.jsonl").resolve()
    if path.is_file() and not _readable_jsonl(path):
        aside = path.with_name(f"{path.name}.corrupt")
        path.replace(aside)
        log.warning(
            "cached task data %s is unreadable: moved aside to %s; writing it again", path, aside.name
        )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            for row in stdlib_lambada_examples():
                fh.write(json.dumps(row) + "\n")
        tmp.replace(path)
    return {
        "include": str(lambada_yaml),  # lambada's metrics
        "task": STDLIB_TASK,
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "training_split": None,
        "validation_split": None,
        "test_split": "test",
        "doc_to_text": "context",
        "doc_to_target": "target",
        "should_decontaminate": False,
        "metadata": {
            "version": STDLIB_VERSION,
            "note": "LAMBADA-style: predict the last identifier of a line of held-out stdlib code",
        },
    }
