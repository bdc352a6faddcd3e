"""Hugging Face caches laid out as a download would leave them, built offline, for tests of
offline runs: a model repository in the hub cache, a dataset in the `datasets` cache."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import datasets


def save_hub_model(hub_cache: Path, repo_id: str, model, tokenizer, commit: str, refs=("main",)) -> Path:
    """``hub_cache/models--org--name/snapshots/<commit>/`` holding ``model`` and ``tokenizer``, with
    ``refs/<ref>`` naming that commit for every ref (e.g. "main", "step1000")."""
    repo = Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def seed_datasets_cache(cache: Path, repo_id: str, config: str, splits: dict[str, list[dict]]) -> Path:
    """The `datasets` cache entry ``load_dataset(repo_id, config)`` leaves behind
    (``<ns>___<name>/<config>/<version>/<hash>/`` with Arrow files and dataset_info.json), built by
    `datasets` itself from rows, so that ``load_dataset(repo_id)`` with HF_DATASETS_OFFLINE=1 finds it."""
    namespace, name = repo_id.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for split, rows in splits.items():
            path = Path(tmp) / f"{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            files[split] = str(path)
        builder = datasets.load_dataset_builder("json", data_files=files, cache_dir=str(Path(tmp) / "c"))
        builder.download_and_prepare()
        built = Path(builder.cache_dir)
        target = Path(cache) / f"{namespace}___{name}" / config / "0.0.0" / "seeded"
        target.mkdir(parents=True, exist_ok=True)
        info = json.loads((built / "dataset_info.json").read_text())
        info.update({"config_name": config, "dataset_name": name})
        (target / "dataset_info.json").write_text(json.dumps(info))
        for split in splits:
            shutil.copy(built / f"json-{split}.arrow", target / f"{name}-{split}.arrow")
    return target
