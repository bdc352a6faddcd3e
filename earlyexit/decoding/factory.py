"""Build a decoding strategy by name, with the settings a config gives it."""

from __future__ import annotations

from earlyexit.decoding.base import Strategy
from earlyexit.decoding.dssd import DSSDDecoding
from earlyexit.decoding.dynamic_exit import DELDecoding, check_del_settings
from earlyexit.decoding.early_exit import EarlyExitDecoding
from earlyexit.decoding.full import FullDecoding
from earlyexit.decoding.layerskip import LayerSkipDecoding
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.engine import check_kv_strategy

MODES = ("full", "early-exit", "layerskip", "dssd", "del")
LOSSLESS = ("full", "layerskip", "dssd", "del")


def check_mode(
    name: str,
    draft_length: int = 4,
    max_draft: int = 5,
    kv: str = "fill",
    decay: float = 0.95,
    draft_stop: str = "confidence",
    context: int = 32,
    head_cost: float = 0.0,
) -> None:
    """Reject a bad mode or setting before any model loads (`decay`..`head_cost`: del only)."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; valid: {', '.join(MODES)}")
    try:
        check_kv_strategy(kv)
    except ValueError as err:
        raise ValueError(f"engine.kv: {err}") from None
    if kv != "fill" and name != "early-exit":
        raise ValueError(
            f"engine.kv={kv} is lossy and mode {name} accepts only fill "
            f"({'lossless: verification needs exact K/V' if name in LOSSLESS else 'it never exits'}); "
            "use engine.kv=fill, or mode=early-exit"
        )
    if name == "layerskip" and draft_length < 1:
        raise ValueError(f"mode.draft_length must be >= 1, got {draft_length}")
    if name == "dssd" and max_draft < 1:
        raise ValueError(f"mode.max_draft must be >= 1, got {max_draft}")
    if name == "del":
        try:
            check_del_settings(max_draft, decay, draft_stop, context, head_cost)
        except ValueError as err:
            raise ValueError(f"mode.{str(err).removeprefix('del ')}") from None


def make_strategy(
    name: str,
    heads: HeadSet | None = None,
    policy: ThresholdPolicy | None = None,
    exit_layer: int | None = None,
    draft_length: int = 4,
    max_draft: int = 5,
    kv: str = "fill",
    decay: float = 0.95,
    draft_stop: str = "confidence",
    context: int = 32,
    head_cost: float = 0.0,
    candidate_layers: list[int] | None = None,
) -> Strategy:
    """`exit_layer=None` picks the deepest head for layerskip; `kv` applies to early-exit only.

    del: `max_draft` caps its drafts per round (its config gives 18, the DEL code's); its other
    settings are `DELDecoding`'s, `candidate_layers=None` meaning every head layer.
    """
    check_mode(name, draft_length, max_draft, kv, decay, draft_stop, context, head_cost)
    if name == "full":
        return FullDecoding()
    if name == "del":
        if heads is None:
            raise ValueError("mode del needs heads")
        return DELDecoding(heads, max_draft, decay, draft_stop, context, candidate_layers, head_cost)
    if name == "layerskip":
        if heads is None:
            raise ValueError("mode layerskip needs heads")
        return LayerSkipDecoding(heads, heads.layers[-1] if exit_layer is None else exit_layer, draft_length)
    if policy is None:
        raise ValueError(f"mode {name} needs calibrated thresholds (a ThresholdPolicy)")
    return EarlyExitDecoding(policy, kv) if name == "early-exit" else DSSDDecoding(policy, max_draft)
