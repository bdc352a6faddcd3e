"""Is this run offline? One answer for tasks and training text: the ``HF_*_OFFLINE`` variables,
else a single short probe of the hub per process (compute nodes often have no internet, and a
hub call there hangs before it fails)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

__all__ = ["datasets_offline", "env_offline", "is_offline"]

_probe: list[str | None] = []  # one hub probe per process


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


def env_offline() -> bool:
    """True when HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or TRANSFORMERS_OFFLINE is set."""
    return any(_truthy(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_unreachable() -> str | None:
    if not _probe:
        from earlyexit.model.loading import hub_unreachable_reason

        _probe.append(hub_unreachable_reason())
    return _probe[0]


def is_offline(offline: bool | None) -> bool:
    """An explicit setting wins; null = offline when HF_*_OFFLINE says so or the hub does not answer."""
    if offline is not None:
        return bool(offline)
    if env_offline():
        return True
    reason = _hub_unreachable()
    if reason is not None:
        log.warning("the Hugging Face hub cannot be reached (%s): data is read from local copies", reason)
    return reason is not None


def datasets_offline() -> None:
    """Make `datasets` read its cache without trying the hub: it reads HF_*_OFFLINE once, at import,
    and an offline decision may come later (from the hub probe)."""
    import datasets
    import huggingface_hub

    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
