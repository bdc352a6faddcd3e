"""Decoding modes behind one interface (`Strategy.generate`): full, early-exit, LayerSkip, DSSD, DEL;
`generate_batch` decodes several prompts together with the same strategies.

May import from ``earlyexit.data``, ``earlyexit.model`` and ``earlyexit.exits``.
"""

from earlyexit.decoding.base import DecodeResult, DecodeSettings, DecodeStats, Strategy, engine_for
from earlyexit.decoding.batched import BatchResult, batched_engine_for, generate_batch
from earlyexit.decoding.dssd import DSSDDecoding
from earlyexit.decoding.dynamic_exit import DELDecoding
from earlyexit.decoding.early_exit import EarlyExitDecoding
from earlyexit.decoding.factory import LOSSLESS, MODES, check_mode, make_strategy
from earlyexit.decoding.full import FullDecoding
from earlyexit.decoding.layerskip import LayerSkipDecoding
from earlyexit.decoding.stops import Stop, StopCheck

__all__ = [
    "LOSSLESS",
    "MODES",
    "check_mode",
    "make_strategy",
    "BatchResult",
    "batched_engine_for",
    "generate_batch",
    "DELDecoding",
    "DSSDDecoding",
    "DecodeResult",
    "DecodeSettings",
    "DecodeStats",
    "EarlyExitDecoding",
    "FullDecoding",
    "LayerSkipDecoding",
    "Stop",
    "StopCheck",
    "Strategy",
    "engine_for",
]
