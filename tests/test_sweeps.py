"""The W&B sweep configs in sweeps/: valid for W&B's own sweep engine, and every run they can draw
is a command our Hydra app accepts.

The sweep controller needs the W&B server, so the tests play its part locally: the open-source
engine (PyPI `sweeps`) validates each config and draws its runs (all grid points; a few Bayesian
suggestions from fake finished runs), and wandb's own agent helpers render the command line.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from conftest import TINY_RUN
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from wandb_files import read_offline_run

with warnings.catch_warnings():  # sweeps 0.3 still uses a pydantic v1 class Config
    warnings.simplefilter("ignore")
    import sweeps
    from sweeps import RunState, SweepConfig, SweepRun, next_runs

from wandb.sdk.launch.sweeps import utils as sweep_utils

from earlyexit.harness import runner
from earlyexit.harness.runner import validate

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
_ABSENT = object()


def load_sweep(path: Path) -> SweepConfig:
    """The sweep config as the engine sees it: schema violations fail here, as `wandb sweep` would."""
    config = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    return SweepConfig(config)


def draw(sweep: SweepConfig, n_bayes: int = 3) -> list[dict[str, Any]]:
    """Parameter sets the controller would hand out: every grid point, or Bayesian suggestions."""
    if sweep["method"] == "grid":
        runs = [r for r in next_runs(sweep, [], validate=True, n=10_000) if r is not None]
    else:
        prior = [fake_finished_run(sweep, seed) for seed in range(6)]
        runs = next_runs(sweep, prior, validate=True, n=n_bayes)
    # The server stores and sends run configs as JSON: numpy scalars arrive as plain numbers.
    return [json.loads(json.dumps({k: v["value"] for k, v in r.config.items()}, default=float)) for r in runs]


def fake_finished_run(sweep: SweepConfig, seed: int) -> SweepRun:
    """A finished run with a random point of the search space and a made-up objective value."""
    (point,) = next_runs({**sweep, "method": "random"}, [], n=1)
    config = copy.deepcopy(point.config)
    target = float(config["calibration.target"]["value"])
    speedup = 1.0 + 0.05 * (seed % 3) - abs(target - 0.8)  # an interior optimum, as on real models
    return SweepRun(
        name=f"fake-{seed}", state=RunState.finished, config=config, summary_metrics={"speedup": speedup}
    )


def agent_command(sweep: SweepConfig, params: dict[str, Any]) -> list[str]:
    """The command line the W&B agent runs for `params` (wandb_agent.Agent._command_run, non-Windows)."""
    command = sweep_utils.create_sweep_command(list(sweep.get("command") or []))
    variables = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])
    out: list[str] = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            out += variables.get(chunk[2:-1]) or []
        else:
            out.append(chunk)
    return out


def overrides(sweep: SweepConfig, params: dict[str, Any]) -> list[str]:
    """What Hydra receives: the rendered command after the program."""
    command = agent_command(sweep, params)
    return command[command.index(sweep["program"]) + 1 :]


def key_problems(sweep: SweepConfig, params: dict[str, Any]) -> list[str]:
    """Why this draw would not run: Hydra refuses an override, a swept key is absent, or validation fails."""
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides(sweep, params))
    except HydraException as err:
        return [f"{type(err).__name__}: {err}"]
    problems = [
        f"{key}: not in the config"
        for key in params
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT
    ]
    try:
        # Agents need network (W&B), so the hub serves Pythia's training text there; offline text
        # resolution has its own tests (tests/tasks/test_training_text.py).
        with mock.patch.object(runner, "resolve_text_source", return_value="hub"):
            validate(cfg)
    except ValueError as err:
        problems.append(f"validate: {err}")
    return problems


def test_there_are_the_five_sweeps():
    names = {"metric_target", "layerskip_grid", "bayes_thresholds", "kv_strategy", "head_choice"}
    assert {p.stem for p in SWEEPS} == names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_validates_draws_and_composes(path):
    sweep = load_sweep(path)
    assert sweep["program"] == "run.py" and sweep["command"] == COMMAND
    assert sweep["parameters"]["logger"]["value"] == "wandb"  # else the runs report nothing to W&B
    draws = draw(sweep)
    swept = sweep["parameters"]
    if sweep["method"] == "grid":
        sizes = [len(p["values"]) for p in swept.values() if "values" in p]
        expected = 1
        for size in sizes:
            expected *= size
        assert len(draws) == expected
        assert len({json.dumps(d, sort_keys=True) for d in draws}) == expected  # all combinations, once each
    else:
        assert len(draws) == 3
    for params in draws:
        assert set(params) == set(swept)
        for key, spec in swept.items():
            if "values" in spec:
                assert params[key] in spec["values"]
            elif "min" in spec:
                assert spec["min"] <= params[key] <= spec["max"]
        command = agent_command(sweep, params)
        assert command[:3] == ["/usr/bin/env", "python", "run.py"]
        assert sorted(command[3:]) == sorted(f"{k}={v}" for k, v in params.items())
        assert key_problems(sweep, params) == [], (params, command)


def test_bayes_searches_a_continuous_target_in_unit_interval():
    sweep = load_sweep(ROOT / "sweeps" / "bayes_thresholds.yaml")
    target = sweep["parameters"]["calibration.target"]
    assert target["distribution"] == "uniform" and 0 < target["min"] < target["max"] <= 1
    assert set(sweep["parameters"]["metric"]["values"]) == {"entropy", "max-prob", "margin"}


def test_layerskip_exit_layers_are_the_default_head_layers():
    sweep = load_sweep(ROOT / "sweeps" / "layerskip_grid.yaml")
    assert sweep["parameters"]["mode.exit_layer"]["values"] == [1, 2, 4, 5]


BAD = {
    "bogus_key": {"calibration.bogus": {"values": [1, 2]}},
    "bogus_group_option": {"metric": {"values": ["entropy", "confidence"]}},
    "key_of_another_mode": {"mode": {"value": "dssd"}, "mode.exit_layer": {"values": [1]}},
    "exit_layer_not_a_head": {"mode": {"value": "layerskip"}, "mode.exit_layer": {"values": [3]}},
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_sweep_is_caught(tmp_path, name):
    config = {"program": "run.py", "method": "grid", "command": COMMAND, "parameters": BAD[name]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    sweep = load_sweep(path)  # schema-valid: only our config can tell
    problems = [p for params in draw(sweep) for p in key_problems(sweep, params)]
    assert problems, name


def test_one_rendered_command_runs(tmp_path, tmp_path_factory):
    """The first metric_target run, exactly as an agent renders it, on the embedded model (offline W&B)."""
    sweep = load_sweep(ROOT / "sweeps" / "metric_target.yaml")
    params = draw(sweep)[0]
    assert params["model"] == "embedded"
    command = agent_command(sweep, params) + [
        *TINY_RUN,
        f"results.path={tmp_path / 'records.jsonl'}",
        f"cache_dir={tmp_path_factory.getbasetemp() / 'earlyexit-cache'}",  # shared with test_wandb
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        # `/usr/bin/env python` must find this interpreter, as it finds the agent's on a real machine.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        WANDB_DIR=str(tmp_path),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DISABLE_GIT="true",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = (tmp_path / "records.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["status"] == "ok"
    assert record["config.mode.name"] == params["mode"] and record["config.metric.name"] == params["metric"]
    assert record["config.calibration.target"] == params["calibration.target"]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    # Every sweep's objective is a number this real run logged to W&B, equal to its record's.
    summary = read_offline_run(run_dir)["summary"]
    for path in SWEEPS:
        name = load_sweep(path)["metric"]["name"]
        assert isinstance(summary.get(name), float), (path.stem, name, sorted(summary))
        assert summary[name] == pytest.approx(record[f"metric.{name}"])
