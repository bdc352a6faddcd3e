"""The results store: flat records, stable experiment identity, concurrent appends, robust loading."""

from __future__ import annotations

import json
import math
import multiprocessing
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from earlyexit.harness import results
from earlyexit.harness.results import (
    SCHEMA_VERSION,
    EmptyResultsError,
    ResultStore,
    ResultsWarning,
    config_key,
    flatten_config,
    make_record,
)

ENV = {"device": "cpu", "device_name": "test cpu", "threads": 1, "dtype": "float32", "git_commit": "abc"}


def nested_cfg():
    return OmegaConf.create(
        {
            "seed": 3,
            "device": "cpu",
            "force": False,
            "cache_dir": "artifacts",
            "model": {"name": "embedded", "dtype": "float32"},
            "heads": {"architecture": "linear", "layers": None, "n": 4},
            "train": {"lr": 1.0e-4, "seed": "${seed}", "tag": "run-${model.name}"},
            "calibration": {"targets": [0.6, 0.9], "max_tokens": 16},
            "empty": {},
            "_private": 1,
            "heads_extra": {"_target_": "x.y", "keep": True},
            "hydra": {"run": {"dir": "${hydra:runtime.cwd}"}, "job": {"chdir": False}},
        }
    )


def record(key_seed: int = 0, status: str = "ok", **metrics) -> dict:
    flat = flatten_config(nested_cfg()) | {"seed": key_seed}
    return make_record(flat, metrics or {"acc": 0.5}, ENV, status=status)


def test_flatten_config_resolves_dots_lists_and_skips_hydra_and_private():
    flat = flatten_config(nested_cfg())
    assert flat["heads.architecture"] == "linear"
    assert flat["heads.layers"] is None
    assert flat["train.seed"] == 3 and flat["train.tag"] == "run-embedded"
    assert flat["calibration.targets"] == "[0.6, 0.9]"
    assert json.loads(flat["calibration.targets"]) == [0.6, 0.9]
    assert flat["empty"] == "{}"
    assert flat["heads_extra.keep"] is True
    assert not any(k.startswith("hydra") or "_private" in k or "_target_" in k for k in flat)
    assert all(v is None or isinstance(v, str | int | float | bool) for v in flat.values())
    # A plain dict is accepted too, with interpolations resolved the same way.
    assert flatten_config({"a": 1, "b": {"c": "${a}"}}) == {"a": 1, "b.c": 1}


def test_config_key_stable_ignores_bookkeeping_and_tracks_real_changes():
    flat = flatten_config(nested_cfg())
    key = config_key(flat)
    assert key == config_key(dict(reversed(list(flat.items()))))
    noise = {"force": True, "cache_dir": "/elsewhere", "logger.level": "DEBUG", "hydra.job.num": 7}
    noise["results.path"] = "other.jsonl"
    assert config_key(flat | noise) == key
    assert config_key(flat | {"train.lr": 2.0e-4}) != key
    assert config_key(flat | {"forced_choice": 1}) != key  # prefixes match whole dotted segments
    assert config_key(flat | {"train.lr": 2.0e-4}, ignore=("train",)) == config_key(flat, ignore=("train",))
    assert len(key) == 16 and int(key, 16) >= 0


def test_make_record_is_flat_and_typed():
    flat = flatten_config(nested_cfg())
    metrics = {"acc": np.float32(0.25), "n": np.int64(7), "curve": [1, 2], "nan": float("nan")}
    rec = make_record(flat, metrics, ENV, per_head={4: {"agree": 0.9}})
    assert rec["schema_version"] == SCHEMA_VERSION and rec["status"] == "ok" and rec["error"] is None
    assert len(rec["run_id"]) == 32 and rec["config_key"] == config_key(flat)
    assert pd.Timestamp(rec["created_at"]).tzinfo is not None
    assert rec["config.heads.architecture"] == "linear" and rec["env.device"] == "cpu"
    assert rec["metric.acc"] == 0.25 and rec["metric.n"] == 7 and type(rec["metric.n"]) is int
    assert rec["metric.curve"] == "[1, 2]" and math.isnan(rec["metric.nan"])
    assert json.loads(rec["per_head"]) == {"4": {"agree": 0.9}}
    assert all(not isinstance(v, dict | list) for v in rec.values())
    assert make_record(flat, {}, ENV)["run_id"] != rec["run_id"]
    with pytest.raises(ValueError, match="status"):
        make_record(flat, {}, ENV, status="crashed")


def test_append_load_round_trip_with_nan_inf_none_and_per_head(tmp_path):
    store = ResultStore(tmp_path / "deep" / "dir" / "results.jsonl")  # parent dirs created
    per_head = {4: {"agree": float("nan"), "share": 0.25}, 8: {"agree": 1.0, "share": float("inf")}}
    metrics = {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "none": None, "x": 1.5}
    a = make_record(flatten_config(nested_cfg()), metrics, ENV, per_head=per_head)
    b = make_record(
        flatten_config(nested_cfg()), {"x": 2.0}, ENV, status="failed", error="Traceback...\nBoom"
    )
    store.append(a)
    store.append(b)

    df = store.load()
    assert len(df) == 2 and list(df["run_id"]) == [a["run_id"], b["run_id"]]
    row = df.iloc[0]
    assert math.isnan(row["metric.nan"]) and row["metric.inf"] == math.inf and row["metric.ninf"] == -math.inf
    assert pd.isna(row["metric.none"]) and row["metric.x"] == 1.5
    assert df["metric.x"].dtype == np.float64 and pd.isna(df.iloc[1]["metric.nan"])
    assert df.iloc[1]["status"] == "failed" and df.iloc[1]["error"].endswith("Boom")
    loaded = json.loads(row["per_head"])
    assert math.isnan(loaded["4"]["agree"]) and loaded["8"]["share"] == math.inf
    assert pd.isna(df.iloc[1]["per_head"])
    assert row["config.calibration.targets"] == "[0.6, 0.9]" and row["env.threads"] == 1
    assert isinstance(df["created_at"].dtype, pd.DatetimeTZDtype)
    assert list(df.columns[:6]) == ["schema_version", "run_id", "config_key", "status", "error", "created_at"]
    # The raw store is also readable by pandas directly, NaN/inf included.
    raw = pd.read_json(store.path, lines=True)
    assert math.isnan(raw["metric.nan"].iloc[0]) and raw["metric.ninf"].iloc[0] == -math.inf


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_load_missing_or_empty_store_names_path_and_how_to_fill_it(tmp_path, content):
    path = tmp_path / "results.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EmptyResultsError, match="run.py") as err:
        ResultStore(path).load()
    assert str(path) in str(err.value)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


def test_finished_counts_only_ok_records(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    failed, ok = record(1, status="failed"), record(2)
    assert not store.finished(ok["config_key"])  # no store yet
    store.append(failed)
    store.append(ok)
    assert not store.finished(failed["config_key"])  # failed runs are retried
    assert store.finished(ok["config_key"])
    assert not store.finished("0" * 16)
    store.append(record(1))
    assert store.finished(failed["config_key"])


def test_torn_last_line_is_skipped_with_warning_and_next_append_survives(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    first, second = record(1), record(2)
    store.append(first)
    store.append(second)
    line = json.dumps(record(3))
    with store.path.open("a") as f:
        f.write(line[: len(line) // 2])  # a writer killed mid-line: no closing brace, no newline
    with pytest.warns(ResultsWarning, match=r"line 3\b"):
        df = store.load()
    assert list(df["run_id"]) == [first["run_id"], second["run_id"]]

    after = record(4)
    store.append(after)  # must not be glued onto the torn line
    with pytest.warns(ResultsWarning, match=r"line 3\b"):
        df = store.load()
    assert list(df["run_id"]) == [first["run_id"], second["run_id"], after["run_id"]]
    assert store.finished(after["config_key"])


def _writer(path: str, writer: int, n: int) -> None:
    store = ResultStore(path)
    flat = {"writer": writer}
    for i in range(n):
        # Lines well over PIPE_BUF and the page size, so interleaving would be visible.
        store.append(make_record(flat | {"i": i}, {"pad": "x" * 9000}, ENV))


def test_concurrent_appends_from_several_processes_all_land_intact(tmp_path):
    path = tmp_path / "shared" / "r.jsonl"
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    procs = [ctx.Process(target=_writer, args=(str(path), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    seen = {(r["config.writer"], r["config.i"]) for r in map(json.loads, lines)}
    assert seen == {(w, i) for w in range(4) for i in range(50)}
    assert len(ResultStore(path).load()) == 200


def test_unknown_schema_version_is_reported_by_run_id_and_dropped_or_kept(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    current, future = record(1), record(2) | {"schema_version": 99}
    store.append(current)
    store.append(future)
    with pytest.warns(ResultsWarning, match=rf"dropped: {future['run_id']} \(schema_version=99\)"):
        df = store.load()
    assert list(df["run_id"]) == [current["run_id"]]
    with pytest.warns(ResultsWarning, match=rf"kept as is: {future['run_id']}"):
        df = store.load(unknown="keep")
    assert list(df["schema_version"]) == [SCHEMA_VERSION, 99]


def test_older_known_versions_are_upgraded_on_load(tmp_path, monkeypatch):
    # Pretend this code is at v2, where v1's metric.acc was renamed metric.accuracy.
    def v1_to_v2(rec: dict) -> dict:
        rec = dict(rec)
        rec["metric.accuracy"] = rec.pop("metric.acc")
        return rec

    store = ResultStore(tmp_path / "r.jsonl")
    old = record(1, acc=0.75)
    store.append(old)
    monkeypatch.setattr(results, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(results, "_UPGRADES", {1: v1_to_v2})
    monkeypatch.setattr(results, "_OLDEST_KNOWN", 1)
    df = store.load()
    assert df.iloc[0]["schema_version"] == 2 and df.iloc[0]["metric.accuracy"] == 0.75
    assert "metric.acc" not in df
