"""One flat record per run, appended to a JSON Lines store that pandas reads in one call.

Why JSON Lines + ``flock``: a Hydra multirun, or many SLURM jobs at once, all write to the same
store. Each run appends exactly one line, so the store is append-only and needs no database or
server; an exclusive ``fcntl.flock`` around a single ``O_APPEND`` write keeps concurrent lines from
interleaving (flock also works on Linux NFS, where it is emulated with byte-range locks), and an
fsync makes the line durable before the job exits. A job killed mid-write loses at most the line it
was writing: the next writer terminates the torn line, and ``load`` skips it with a warning.

Non-finite floats are written as the bare tokens ``NaN``, ``Infinity`` and ``-Infinity``
(``json.dumps(allow_nan=True)``). Both ``json.loads`` and ``pandas.read_json`` parse them back to
float NaN/inf, so they round-trip exactly and stay distinct from ``null`` (None, "not measured"),
which strings or nulls would not. The cost: strict JSON parsers (e.g. ``JSON.parse``) reject them.

Records are flat (``config.<key>``, ``metric.<name>``, ``env.<key>``) so ``load`` gives one row per
run with plain columns; per-head details are one JSON string column, ``per_head``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

SCHEMA_VERSION = 1

# Config keys that do not change what a run measures, so they must not change its identity.
# Each entry matches the key itself and everything under it ("logger" matches "logger.level").
DEFAULT_IGNORE: tuple[str, ...] = (
    "force",  # re-run a finished config: same experiment
    "logger",  # verbosity and log sinks
    "hydra",  # Hydra's own settings (run dirs, launcher, sweep bookkeeping)
    "cache_dir",  # where trained heads are cached, not what they are
    "results",  # where this record is stored
)

# Upgrades from version v to v + 1, applied in order on load. Only v1 exists, so this is empty;
# when v2 arrives, add `1: _v1_to_v2` and older stores keep loading.
_UPGRADES: dict[int, Callable[[dict], dict]] = {}
_OLDEST_KNOWN = SCHEMA_VERSION - len(_UPGRADES)

_GROUP_ORDER = ("config.", "metric.", "env.", "per_head")

Scalar = str | int | float | bool | None


class EmptyResultsError(FileNotFoundError, ValueError):
    """The store is missing or holds no loadable record (catch as FileNotFoundError or ValueError)."""


class ResultsWarning(UserWarning):
    """A store line was skipped or kept despite being unreadable or from an unknown schema."""


def flatten_config(cfg: DictConfig | dict) -> dict[str, Scalar]:
    """Resolved, dotted, scalar-only view of a config: one column per setting in the results table.

    Lists become JSON strings (a list is one setting, e.g. calibration targets); the ``hydra`` node
    and keys starting with ``_`` are skipped, as they describe the launcher, not the experiment.
    """
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    flat: dict[str, Scalar] = {}
    _flatten(node, "", flat)
    return flat


def _flatten(node: DictConfig, prefix: str, out: dict[str, Scalar]) -> None:
    for key in node.keys():
        key = str(key)
        if key.startswith("_") or (not prefix and key == "hydra"):
            continue
        value = node[key]  # item access resolves interpolations against the root config
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            if len(value) == 0:
                out[name] = "{}"
            else:
                _flatten(value, f"{name}.", out)
        elif isinstance(value, ListConfig):
            out[name] = _dumps(OmegaConf.to_container(value, resolve=True))
        else:
            out[name] = _scalar(value)


def config_key(flat: dict, ignore: Iterable[str] = DEFAULT_IGNORE) -> str:
    """Short stable hash naming "the same experiment": independent of key order and ignored keys."""
    ignore = tuple(ignore)
    kept = {k: v for k, v in flat.items() if not _ignored(k, ignore)}
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ignored(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def make_record(
    flat_config: dict,
    metrics: dict,
    env: dict,
    status: str = "ok",
    error: str | None = None,
    per_head: dict | None = None,
) -> dict:
    """One flat record for one run; ``env`` is ``earlyexit.measure.timing.environment(device, dtype)``."""
    if status not in ("ok", "failed"):
        raise ValueError(f"status must be 'ok' or 'failed', got {status!r}")
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex,
        "config_key": config_key(flat_config),
        "status": status,
        "error": error,
        "created_at": datetime.now(UTC).isoformat(),
    }
    record.update({f"config.{k}": _scalar(v) for k, v in flat_config.items()})
    record.update({f"metric.{k}": _scalar(v) for k, v in metrics.items()})
    record.update({f"env.{k}": _scalar(v) for k, v in env.items()})
    record["per_head"] = None if per_head is None else _dumps(per_head)
    return record


def _scalar(value: Any) -> Scalar:
    """Scalars pass through (numpy/torch 0-d values unwrapped); anything else becomes a JSON string."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Enum):
        return _scalar(value.value)
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return _dumps(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True, default=_json_default)


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)


class ResultStore:
    """Append-only JSON Lines file of run records, safe for many concurrent writers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    def append(self, record: dict) -> None:
        """Write one record as one line, under an exclusive lock, and fsync it."""
        line = (json.dumps(record, allow_nan=True, default=_json_default) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A writer died mid-line: end its torn line so ours is not glued onto it.
                    line = b"\n" + line
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def load(self, unknown: Literal["drop", "keep"] = "drop") -> pd.DataFrame:
        """All records as one DataFrame, one row per run, NaN/inf restored.

        Corrupt lines (a writer killed mid-line) are skipped with a warning naming their line
        numbers. Records from an unknown (e.g. newer) schema are named by run_id in a warning and
        dropped, or kept as they are with ``unknown="keep"``; older known versions are upgraded.
        """
        if unknown not in ("drop", "keep"):
            raise ValueError(f"unknown must be 'drop' or 'keep', got {unknown!r}")
        if not self.path.exists():
            raise EmptyResultsError(f"no results store at {self.path}: {_HOW_TO}")
        records, corrupt = [], []
        for lineno, record in self._lines():
            if record is None:
                corrupt.append(lineno)
            else:
                records.append(record)
        if corrupt:
            warnings.warn(
                f"{self.path}: skipped {len(corrupt)} corrupt line(s) (writer killed mid-line?): "
                f"line {', '.join(map(str, corrupt))}",
                ResultsWarning,
                stacklevel=2,
            )
        records = self._upgrade_all(records, unknown)
        if not records:
            raise EmptyResultsError(f"results store {self.path} holds no loadable records: {_HOW_TO}")
        df = pd.DataFrame.from_records(records)
        df = df[sorted(df.columns, key=_column_group)]  # stable: meta, config, metric, env, per_head
        if "created_at" in df:
            df["created_at"] = pd.to_datetime(df["created_at"], utc=True, format="ISO8601", errors="coerce")
        return df

    def finished(self, config_key: str) -> bool:
        """True if a successful record for this config exists; failed runs do not count (retried)."""
        if not self.path.exists():
            return False
        return any(
            r is not None and r.get("config_key") == config_key and r.get("status") == "ok"
            for _, r in self._lines()
        )

    def _lines(self) -> Iterator[tuple[int, dict | None]]:
        """(1-based line number, record or None if the line is not a JSON object); blank lines skipped."""
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
                    record = None
                yield lineno, record if isinstance(record, dict) else None

    def _upgrade_all(self, records: list[dict], unknown: str) -> list[dict]:
        out, strange = [], []
        for record in records:
            version = record.get("schema_version")
            if isinstance(version, int) and _OLDEST_KNOWN <= version <= SCHEMA_VERSION:
                out.append(upgrade(record))
                continue
            strange.append(f"{record.get('run_id', '<no run_id>')} (schema_version={version!r})")
            if unknown == "keep":
                out.append(record)
        if strange:
            action = "kept as is" if unknown == "keep" else "dropped"
            warnings.warn(
                f"{self.path}: {len(strange)} record(s) with unknown schema version "
                f"(this code knows {_OLDEST_KNOWN}..{SCHEMA_VERSION}) {action}: {', '.join(strange)}",
                ResultsWarning,
                stacklevel=3,
            )
        return out


def upgrade(record: dict) -> dict:
    """Bring a record of a known older schema up to SCHEMA_VERSION, one version step at a time."""
    while record["schema_version"] < SCHEMA_VERSION:
        version = record["schema_version"]
        record = {**_UPGRADES[version](record), "schema_version": version + 1}
    return record


_HOW_TO = "produce results with `python run.py ...` (one record per run), or check the path."


def _column_group(column: str) -> int:
    for i, prefix in enumerate(_GROUP_ORDER, start=1):
        if column.startswith(prefix):
            return i
    return 0
