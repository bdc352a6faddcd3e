"""Where a generation ends besides EOS and the token budget: stop strings and stop patterns.

Checked as tokens are emitted, inside every mode (a stop inside a run of accepted drafts ends
the output there), so the timed work is the work a user gets: lm-eval's `until`, a summary's
blank line, a code completion's dedent. `Stop` is the plain description (strings and regular
expressions found in the generated text); `StopCheck` binds it to a tokenizer's decode.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Stop", "StopCheck"]

# Tokens decoded from the end of the output to look for a stop that the newest token completed:
# each token adds at least one character for any text a stop can match, except for pieces of a
# multi-byte character, hence the slack.
SLACK_TOKENS = 8


@dataclass(frozen=True)
class Stop:
    """Stop strings (lm-eval's ``until``) and stop patterns (regular expressions) on the output.

    ``window`` is how many characters a pattern match may span at most (for the tail check).
    """

    strings: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    window: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "strings", tuple(s for s in self.strings if s))
        object.__setattr__(self, "patterns", tuple(self.patterns))
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"stop pattern {pattern!r} is not a regular expression: {err}") from None

    def __bool__(self) -> bool:
        return bool(self.strings or self.patterns)

    def find(self, text: str) -> int | None:
        """Index where the first stop starts in ``text``, or None."""
        hits = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        hits += [m.start() for m in (re.search(p, text) for p in self.patterns) if m is not None]
        return min(hits) if hits else None

    def cut(self, text: str) -> str:
        """The text before the first stop (as lm-eval cuts ``until``): what the user gets."""
        at = self.find(text)
        return text if at is None else text[:at]

    @property
    def span(self) -> int:
        """Characters a stop can span."""
        return max([len(s) for s in self.strings] + [self.window if self.patterns else 0])


class StopCheck:
    """``Stop`` on token ids: ``hit(ids)`` after each emitted token decodes only the output's tail."""

    def __init__(self, stop: Stop, decode: Callable[[Sequence[int]], str]) -> None:
        self.stop, self.decode = stop, decode
        self.tail_tokens = stop.span + SLACK_TOKENS

    def hit(self, ids: Sequence[int]) -> bool:
        """Does the output contain a stop? Earlier calls saw every shorter prefix, so only a stop
        the newest token completed can be new, and it lies in the tail."""
        if not self.stop:
            return False
        return self.stop.find(self.decode(ids[-self.tail_tokens :])) is not None

    def text(self, ids: Sequence[int]) -> str:
        """The user's text: all of the output decoded, cut before its first stop."""
        return self.stop.cut(self.decode(ids))
