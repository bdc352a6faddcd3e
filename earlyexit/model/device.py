"""Device helpers the decode loop needs below the harness (it may not import upward)."""

from __future__ import annotations

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so a host timer measures it (a no-op off CUDA)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
