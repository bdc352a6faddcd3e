"""`logger=wandb`: real `run.py` processes logging offline, read back from W&B's own run files.

Nothing is sent: every run is offline or disabled, with WANDB_DIR in a temporary folder. wandb
0.31 writes no `wandb-summary.json` for offline runs, only the `.wandb` transaction log, so the
tests read that: LevelDB-log framing around wandb's own protobuf `Record` messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN
from omegaconf import OmegaConf
from wandb_files import read_offline_run

from earlyexit.harness.loggers import exit_histogram, log_run, run_name, scalar_metrics, strip_wandb_args

ROOT = Path(__file__).resolve().parents[2]
WANDB_ARG = "_wandb={'cli_version': '0.31.0', 'code_path': 'code/run.py', 'python_version': '3.11.7'}"


def wandb_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_DIR=str(tmp_path),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DISABLE_GIT="true",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    return env


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session (test_sweeps uses it too): calibrations are computed once."""
    return tmp_path_factory.getbasetemp() / "earlyexit-cache"


def run_app(tmp_path: Path, cache: Path, *args: str, multirun: bool = False) -> subprocess.CompletedProcess:
    """`python run.py ...` as a process; the timeout turns a hang at wandb.finish into a failure."""
    command = [
        sys.executable,
        "run.py",
        *(["-m"] if multirun else []),
        f"results.path={tmp_path / 'records.jsonl'}",
        f"cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        f"hydra.sweep.dir={tmp_path / 'hydra-multi'}",
        *TINY_RUN,
        *args,
    ]
    return subprocess.run(
        command, cwd=ROOT, env=wandb_env(tmp_path), capture_output=True, text=True, timeout=300
    )


def offline_runs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "wandb").glob("offline-run-*"))


def load_records(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_multirun_logs_each_job_offline_and_exits(tmp_path, tmp_path_factory):
    proc = run_app(
        tmp_path, shared_cache(tmp_path_factory), "logger=wandb", "calibration.target=0.8,0.9", multirun=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["config.calibration.target"]: r for r in load_records(tmp_path)}
    runs = [read_offline_run(d) for d in offline_runs(tmp_path)]
    assert len(runs) == 2 and sorted(records) == [0.8, 0.9]
    for run in runs:
        record = records[run["config"]["calibration.target"]]
        summary = run["summary"]
        assert run["exit_code"] == 0 and summary["status"] == "ok"
        assert summary["run_id"] == record["run_id"] and summary["config_key"] == record["config_key"]
        for name in ("speedup", "tokens_per_s", "tpot_ms", "acceptance_rate", "flops_ratio", "flops_saved"):
            assert summary[name] == pytest.approx(record[f"metric.{name}"]), name
        assert summary["heldout_early_exit_share"] == pytest.approx(record["metric.heldout_early_exit_share"])
        assert summary["exit_histogram_table"]["_type"] == "table-file"
        assert summary["per_head"]["_type"] == "table-file"
        assert run["config"]["metric.name"] == "entropy" and run["config"]["logger.name"] == "wandb"
        assert run["name"] == f"embedded-dssd-entropy-t{run['config']['calibration.target']}"
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/exit_histogram*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["layer", "exits", "share"] and sum(r[1] for r in table["data"]) > 0


def test_disabled_mode_and_resumed_sweep_argument(tmp_path, tmp_path_factory):
    """`logger.mode=disabled` beats WANDB_MODE=offline, and a resumed sweep run's `_wandb=...` is ignored."""
    proc = run_app(
        tmp_path, shared_cache(tmp_path_factory), "logger=wandb", "logger.mode=disabled", WANDB_ARG
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = load_records(tmp_path)
    assert record["status"] == "ok" and record["config.logger.mode"] == "disabled"
    assert offline_runs(tmp_path) == []


def test_failed_run_is_logged_and_finished(tmp_path, tmp_path_factory):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    proc = run_app(tmp_path, shared_cache(tmp_path_factory), "logger=wandb", f"model.name={empty}")
    assert proc.returncode == 1, proc.stderr[-3000:]  # a single run re-raises after recording
    (record,) = load_records(tmp_path)
    assert record["status"] == "failed"
    (run_dir,) = offline_runs(tmp_path)
    run = read_offline_run(run_dir)
    assert run["exit_code"] == 1
    assert run["summary"]["status"] == "failed" and run["summary"]["run_id"] == record["run_id"]
    assert run["summary"]["traceback"] == record["error"]
    assert run["summary"]["error"] == record["error"].strip().splitlines()[-1]


def test_wandb_failure_keeps_record_and_warns(tmp_path, monkeypatch, caplog):
    """record_run stores the record first; a W&B error afterwards is a warning, not a failed run."""
    import wandb
    from hydra import compose, initialize_config_dir

    from earlyexit.harness import runner
    from earlyexit.harness.results import ResultStore

    def broken_init(**kwargs):
        raise RuntimeError("no network")

    fake = {"metrics": {"speedup": 1.5, "exit_histogram": {1: 2}}, "per_head": {}}
    monkeypatch.setattr(wandb, "init", broken_init)
    monkeypatch.setattr(runner, "run", lambda cfg, output_dir=None: fake)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["logger=wandb", "task=none", f"results.path={tmp_path / 'r.jsonl'}"])
    assert runner.record_run(cfg) is fake
    (record,) = ResultStore(tmp_path / "r.jsonl").load().to_dict("records")
    assert record["status"] == "ok" and record["metric.speedup"] == 1.5
    assert "W&B logging failed" in caplog.text and "no network" in caplog.text


def test_helpers():
    argv = ["run.py", "metric=margin", WANDB_ARG, "+_wandb={}", "++_wandb={}", "--_wandb={}"]
    assert strip_wandb_args(argv) == ["run.py", "metric=margin"]
    record = {"metric.speedup": 1.2, "metric.exit_histogram": '{"7": 3, "1": 2}', "metric.ok": True, "x": 1}
    assert scalar_metrics(record) == {"speedup": 1.2, "ok": True}
    assert exit_histogram(record) == {1: 2, 7: 3}
    assert exit_histogram({}) == {}
    flat = {"model.name": "/a/b/pythia-410m", "mode.name": "layerskip", "mode.exit_layer": 4}
    assert run_name({**flat, "mode.draft_length": 6}) == "pythia-410m-layerskip-E4-K6"


def test_wandb_is_called_only_when_it_is_the_logger(monkeypatch, caplog):
    import wandb

    runs = []

    class FakeRun:
        def __init__(self, **kwargs):
            self.init, self.logged, self.summary, self.finished = kwargs, [], {}, None
            runs.append(self)

        def log(self, payload):
            self.logged.append(payload)

        def finish(self, exit_code=0):
            self.finished = exit_code

    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeRun(**kwargs))
    flat = {"model.name": "embedded", "mode.name": "full"}
    record = {"status": "ok", "run_id": "r1", "metric.speedup": 1.5, "metric.tokens": 16}
    log_run(OmegaConf.create({"logger": {"name": "none"}}), flat, record)
    log_run(OmegaConf.create({}), flat, record)  # no logger group at all
    assert runs == []
    with caplog.at_level("WARNING"):
        log_run(OmegaConf.create({"logger": {"name": "tensorboard"}}), flat, record)
    assert runs == [] and "logger.name='tensorboard' is not one of none, wandb" in caplog.text
    # The same record with logger=wandb does reach W&B: the spy above would have seen a call.
    log_run(OmegaConf.create({"logger": {"name": "wandb", "mode": "offline"}}), flat, record)
    (run,) = runs
    assert run.init["name"] == "embedded-full" and run.init["config"] == flat
    assert run.logged == [{"speedup": 1.5, "tokens": 16}] and run.finished == 0
    assert run.summary["run_id"] == "r1"
