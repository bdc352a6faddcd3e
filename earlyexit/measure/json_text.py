"""JSON for files people read: indented, but a list of numbers stays on one line.

Why: a benchmark JSON holds pass traces of thousands of short rows (eight counts each); with
plain `indent=2` every count takes a line, which made the file 474 KB for 94 KB of data and
unreadable in a diff. The standard encoder has no such option, so the indented text is
post-processed: JSON strings cannot hold a raw newline, so only the encoder's own line breaks
inside a list of scalars are removed.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SCALAR = r"(?:-?\d[\d.eE+-]*|-?Infinity|NaN|null|true|false)"
_SCALAR_LIST = re.compile(rf"\[\s*\n\s*({_SCALAR}(?:,\s*\n\s*{_SCALAR})*)\s*\n\s*\]")


def dumps_readable(value: Any, indent: int = 2) -> str:
    """`json.dumps(value, indent=indent)` with every list of numbers (or null/bool) on one line."""
    text = json.dumps(value, indent=indent)
    return _SCALAR_LIST.sub(lambda m: "[" + ", ".join(re.split(r",\s*\n\s*", m.group(1))) + "]", text)
