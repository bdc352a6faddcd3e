"""`device=auto` and `model.dtype=auto`: resolved once, checked before any model loads.

The design card's command must do the right thing on a GPU box without extra flags: CUDA when
one is visible, in the precision the model was trained in (float16 for Pythia); on a CPU,
float32, the only precision in which head training and the decode loop are both sound there.
A request the machine cannot honour fails here, naming the key, the value and what would work.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

__all__ = ["DEVICE_FORMS", "DTYPES", "resolve_device", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is visible, else ``cpu``; any other value is checked."""
    value = str(requested).strip().lower()
    if not _DEVICE.match(value):
        raise ValueError(f"device={requested!r} is not one of {DEVICE_FORMS}")
    cuda = torch.cuda.is_available()
    if value == "auto":
        return "cuda" if cuda else "cpu"
    if value.startswith("cuda"):
        if not cuda:
            raise ValueError(
                f"device={requested!r}, but no CUDA device is visible here (torch.cuda.is_available() is "
                f"False; torch {torch.__version__}); use device=auto or device=cpu"
            )
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device={requested!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    if value == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={requested!r}, but the MPS backend is not available here; use device=cpu")
    return value


def resolve_dtype(requested: str, device: str, native: Callable[[], str | None] = lambda: None) -> str:
    """``auto`` -> the model's own dtype on CUDA (``native()``, float16 if unknown), float32 elsewhere.

    ``device`` must already be resolved. ``native`` is only called for CUDA, so a CPU run never
    needs the model's config. A dtype the device cannot run for head training fails here.
    """
    value = str(requested).strip().lower()
    if value != "auto" and value not in DTYPES:
        raise ValueError(f"model.dtype={requested!r} is not one of auto, {', '.join(DTYPES)}")
    kind = torch.device(device).type
    if value == "auto":
        if kind != "cuda":
            return "float32"
        value = native() or "float16"
        if value not in DTYPES:
            value = "float16"
        if value == "bfloat16" and not torch.cuda.is_bf16_supported():
            value = "float16"  # pre-Ampere GPUs: float16, with a grad scaler in head training
        return value
    if value == "float16" and kind == "cpu":
        raise ValueError(
            "model.dtype='float16' on device=cpu: head training needs float32 master weights and CPU "
            "float16 kernels are slow or missing; use model.dtype=auto (float32 on CPU), float32 or bfloat16"
        )
    if value == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"model.dtype='bfloat16' on device={device}: this GPU has no bfloat16 support; "
            "use model.dtype=auto or float16"
        )
    return value
