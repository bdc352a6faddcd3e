"""Decoding modes behind one interface (`Strategy.generate`)."""

from earlyexit.decoding.base import DecodeResult, DecodeSettings, DecodeStats, Strategy
from earlyexit.decoding.dssd import DSSDDecoding
from earlyexit.decoding.early_exit import EarlyExitDecoding
from earlyexit.decoding.full import FullDecoding
from earlyexit.decoding.layerskip import LayerSkipDecoding

MODES = ("full", "early-exit", "layerskip", "dssd")

__all__ = [
    "MODES",
    "DSSDDecoding",
    "DecodeResult",
    "DecodeSettings",
    "DecodeStats",
    "EarlyExitDecoding",
    "FullDecoding",
    "LayerSkipDecoding",
    "Strategy",
]
