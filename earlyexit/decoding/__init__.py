"""Decoding modes behind one interface (`Strategy.generate`): full, early-exit, LayerSkip, DSSD, DEL.

May import from ``earlyexit.data``, ``earlyexit.model`` and ``earlyexit.exits``.
"""

from earlyexit.decoding.base import DecodeResult, DecodeSettings, DecodeStats, Strategy, engine_for
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
