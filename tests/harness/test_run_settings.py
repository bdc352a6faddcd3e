"""Run settings a new user meets first: device/dtype defaults, model.revision, task sources; each bad
value fails in validate(), before any model loads, naming the key, the value and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eval_data import write_suite
from hydra import compose, initialize_config_dir

from earlyexit.harness import runner
from earlyexit.harness.runner import record_run, resolve_runtime, validate
from earlyexit.tasks import lm_eval_tasks as tasks_module
from earlyexit.tasks.lm_eval_tasks import TaskNotAvailableError

CONF = Path(__file__).resolve().parents[2] / "conf"


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tasks_module, "_memo", {})


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.fixture
def no_model_loads(monkeypatch):
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))


def test_defaults_are_auto_and_resolve_to_cpu_float32_here(no_cuda):
    cfg = config("model=pythia-410m")
    assert (cfg.device, cfg.model.dtype, cfg.model.revision) == ("auto", "auto", None)
    resolved = resolve_runtime(cfg)
    assert (resolved.device, resolved.model.dtype) == ("cpu", "float32")
    assert cfg.device == "auto"  # the caller's config is left as it was


@pytest.mark.parametrize(("model", "dtype"), [("pythia-410m", "float16"), ("embedded", "float16")])
def test_on_a_gpu_machine_the_design_card_runs_on_cuda_in_the_models_own_dtype(fake_cuda, model, dtype):
    resolved = resolve_runtime(config(f"model={model}"))
    assert (resolved.device, resolved.model.dtype) == ("cuda", dtype)
    assert resolve_runtime(config(f"model={model}", "model.dtype=float32")).model.dtype == "float32"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["device=tpu"], "device='tpu' is not one of auto, cpu, cuda, cuda:N, mps"),
        (["device=cuda"], r"device='cuda', but no CUDA device is visible here"),
        (["model.dtype=float16"], "model.dtype='float16' on device=cpu: head training needs float32"),
        (["model.dtype=fp8"], "model.dtype='fp8' is not one of auto, float32, float16, bfloat16, float64"),
        (["model=pythia-160m", "model.revision=step1500"], "model.revision='step1500' is not a revision of"),
        (["model.revision=step1000"], "model.revision='step1000' applies to hub models only"),
        (
            ["task=piqa", "task.data_dir=/nonexistent/eval"],
            "task.data_dir='/nonexistent/eval' does not exist",
        ),
        (
            ["task=piqa", "task.include_path=/nonexistent/yamls"],
            "task.include_path='/nonexistent/yamls' does not",
        ),
        (["engine.kv=copy"], r"engine.kv: unknown KV strategy 'copy'; valid: fill, propagate, skip"),
        (["mode=dssd", "engine.kv=propagate"], "engine.kv=propagate is lossy and mode dssd accepts only"),
        (["mode=layerskip", "engine.kv=skip"], "engine.kv=skip is lossy and mode layerskip accepts only"),
        (["mode=full", "engine.kv=skip"], "engine.kv=skip is lossy and mode full accepts only fill"),
    ],
)
def test_bad_settings_fail_before_any_model_loads(no_cuda, no_model_loads, overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(config(*overrides))


def test_a_task_without_data_fails_before_the_model_loads_not_after_training(
    no_cuda, no_model_loads, tmp_path
):
    """The issue's report: `task=hellaswag` offline failed after heads were trained and calibrated."""
    data = write_suite(tmp_path / "data", ["piqa"])
    cfg = config("task=hellaswag", f"task.data_dir={data}", f"results.path={tmp_path / 'r.jsonl'}")
    with pytest.raises(
        TaskNotAvailableError, match=r"task 'hellaswag' cannot be run offline.*hellaswag_validation"
    ):
        record_run(cfg)
    assert not (tmp_path / "r.jsonl").exists()  # nothing ran, nothing recorded


def test_early_exit_takes_every_kv_strategy(no_cuda, no_model_loads):
    for kv in ("fill", "propagate", "skip"):
        validate(config("mode=early-exit", f"engine.kv={kv}"))


def test_a_revision_is_accepted_for_pythia(no_cuda):
    validate(config("model=pythia-410m", "model.revision=step1000", "data.source=stdlib"))
