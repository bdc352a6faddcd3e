"""device=auto and model.dtype=auto: what they resolve to, and the requests a machine cannot honour.

No GPU is available to these tests: CUDA is simulated by monkeypatching torch.cuda's queries, which
is all the resolution reads. That a real GPU then runs the resolved dtype is not tested here.
"""

from __future__ import annotations

import json

import pytest
import torch

from earlyexit.model.loading import EMBEDDED_MODEL_DIR, native_dtype
from earlyexit.model.runtime import resolve_device, resolve_dtype


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with two CUDA devices, one of which may lack bfloat16 (see `bf16`)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return monkeypatch


def _never() -> str:
    raise AssertionError("a CPU run must not need the model's config")


def test_auto_is_cpu_and_float32_without_cuda(no_cuda):
    assert resolve_device("auto") == "cpu"
    assert resolve_dtype("auto", "cpu", _never) == "float32"


def test_auto_is_cuda_and_the_models_own_dtype_with_cuda(fake_cuda):
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_dtype("auto", "cuda", lambda: "float16") == "float16"
    assert resolve_dtype("auto", "cuda", lambda: "bfloat16") == "bfloat16"
    assert resolve_dtype("auto", "cuda", lambda: "float32") == "float32"
    assert resolve_dtype("auto", "cuda", lambda: None) == "float16"  # config unknown: half precision
    fake_cuda.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda", lambda: "bfloat16") == "float16"
    with pytest.raises(ValueError, match="model.dtype='bfloat16' on device=cuda: this GPU has no bfloat16"):
        resolve_dtype("bfloat16", "cuda")


def test_explicit_values_pass_through(fake_cuda):
    assert resolve_device("CPU") == "cpu"
    assert resolve_dtype("float16", "cuda") == "float16"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("float64", "cpu") == "float64"


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "device='tpu' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("cuda:x", "device='cuda:x' is not one of"),
        ("cuda", r"device='cuda', but no CUDA device is visible here \(torch.cuda.is_available\(\) is False"),
        ("cuda:0", "no CUDA device is visible"),
    ],
)
def test_bad_devices_are_named(no_cuda, device, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(device)


def test_a_cuda_index_beyond_the_visible_devices(fake_cuda):
    with pytest.raises(ValueError, match=r"device='cuda:2', but only 2 CUDA device\(s\) are visible"):
        resolve_device("cuda:2")


def test_float16_on_cpu_and_unknown_dtypes_fail_clearly():
    with pytest.raises(ValueError, match="model.dtype='float16' on device=cpu: head training needs float32"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="model.dtype='int8' is not one of auto, float32, float16, bfloat16"):
        resolve_dtype("int8", "cpu")


def test_native_dtype_reads_configs_without_weights(tmp_path):
    assert native_dtype("pythia-410m") == "float16"  # Pythia is float16 even when not cached
    if (EMBEDDED_MODEL_DIR / "config.json").is_file():
        assert (
            native_dtype("embedded") == json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text())["dtype"]
        )
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert native_dtype(str(tmp_path)) == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert native_dtype(str(tmp_path)) is None
    assert native_dtype("org/not-cached-anywhere") is None
