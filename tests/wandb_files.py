"""Read an offline W&B run back from its `.wandb` file (shared by test_wandb and test_sweeps).

wandb 0.31 writes no `wandb-summary.json` for offline runs, only the `.wandb` transaction log:
LevelDB-log framing around wandb's own protobuf `Record` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


def wandb_records(path: Path):
    """Records of a `.wandb` file: 7-byte file header, then 32 KiB blocks of (crc, length, type) chunks."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, buf, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def read_offline_run(run_dir: Path) -> dict:
    """The run's name, config, summary (history folded in, then summary updates) and exit code."""
    out: dict = {"config": {}, "summary": {}, "exit_code": None, "name": None}

    def update(target: dict, items) -> None:
        for item in items:
            *parents, leaf = [item.key] if item.key else list(item.nested_key)
            node = target
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = json.loads(item.value_json)

    (wandb_file,) = run_dir.glob("run-*.wandb")
    for record in wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["name"] = record.run.display_name
            update(out["config"], record.run.config.update)
        elif kind == "history":
            update(out["summary"], record.history.item)
        elif kind == "summary":
            update(out["summary"], record.summary.update)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out
