"""Timers that tell the truth on GPU too: warm-up excluded, device synchronised, median of repeats."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from earlyexit.model.device import synchronize

__all__ = ["copy_bandwidth", "device_name", "environment", "synchronize", "time_call"]


def time_call(
    fn: Callable[[], object], device: torch.device | str, warmup: int = 2, repeats: int = 5
) -> dict:
    """Median and spread (min, max) of `fn`'s wall time in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": repeats}


def copy_bandwidth(device: torch.device | str, megabytes: int = 256) -> float:
    """Measured device copy bandwidth in bytes/s (bytes read + written), for the roofline."""
    n = megabytes * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), device, warmup=2, repeats=5)["median_s"]
    return 2 * src.numel() * src.element_size() / t


def environment(device: torch.device | str, dtype: torch.dtype) -> dict:
    """Machine, versions and git commit: every stored number carries where it came from."""
    import transformers

    device = torch.device(device)
    return {
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU model's: what a measured cost belongs to."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
